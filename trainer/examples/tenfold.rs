//! History ten times larger for `ci/bench-fit`: a Parquet file's rows repeated `N` times, each
//! copy's timestamp column shifted by `N` times a span (so the copies follow one another in
//! time and a file in event-time order stays so), written a copy per row group.
//!
//! `cargo run --release -p trainer --example tenfold -- IN.parquet OUT.parquet TIME_COLUMN COPIES DAYS`

use polars::prelude::*;

fn main() -> PolarsResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output, time, copies, days] = args.as_slice() else {
        eprintln!("usage: tenfold IN.parquet OUT.parquet TIME_COLUMN COPIES DAYS");
        std::process::exit(2);
    };
    let copies: i64 = copies.parse().unwrap_or(10);
    let days: i64 = days.parse().unwrap_or(182);
    let df = ParquetReader::new(std::fs::File::open(input)?).finish()?;
    let dtype = df.column(time)?.dtype().clone();
    let DataType::Datetime(unit, _) = &dtype else {
        eprintln!("tenfold: {time} is {dtype}, not a timestamp");
        std::process::exit(2);
    };
    let per_day: i64 = match unit {
        TimeUnit::Nanoseconds => 86_400_000_000_000,
        TimeUnit::Microseconds => 86_400_000_000,
        TimeUnit::Milliseconds => 86_400_000,
    };
    let raw = df.column(time)?.cast(&DataType::Int64)?;
    let mut writer = ParquetWriter::new(std::fs::File::create(output)?).batched(df.schema())?;
    for k in 0..copies {
        let shifted = (raw.as_materialized_series() + k * days * per_day)
            .cast(&dtype)?
            .with_name(time.as_str().into());
        let mut copy = df.clone();
        copy.with_column(shifted.into_column())?;
        writer.write_batch(&copy)?;
    }
    writer.finish()?;
    println!("{}", df.height() as i64 * copies);
    Ok(())
}
