//! The I/O ceiling of `trainer export-features --raw` for `ci/bench-fit`: the simplest program
//! doing the same reading and writing with the same library (polars), and nothing else. It reads
//! the columns the pipeline declares from a Parquet file, whole, and writes a Parquet file of
//! the shape the raw export writes (event time as text, split as text, a boolean label, and
//! `--numeric` f64 columns, here copies of the file's first numeric column) in row groups of the
//! same size. No filters, no event times, no windows: what is left is read, cast and write.
//!
//! `cargo run --release -p trainer --example io_ceiling -- IN.parquet OUT.parquet COLUMN... --numeric N`

use polars::prelude::*;

fn main() -> PolarsResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(input), Some(output)) = (args.first(), args.get(1)) else {
        eprintln!("usage: io_ceiling IN.parquet OUT.parquet COLUMN... --numeric N");
        std::process::exit(2);
    };
    let mut columns: Vec<String> = Vec::new();
    let mut numeric = 8;
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        if a == "--numeric" {
            numeric = rest.next().and_then(|n| n.parse().ok()).unwrap_or(8);
        } else {
            columns.push(a.clone());
        }
    }
    let df = ParquetReader::new(std::fs::File::open(input)?)
        .with_columns(Some(columns.clone()))
        .finish()?;
    let n = df.height();
    let time = df.column(&columns[0])?.cast(&DataType::String)?;
    let number = df
        .columns()
        .iter()
        .find(|c| c.dtype().is_primitive_numeric())
        .map_or_else(
            || Column::full_null("x".into(), n, &DataType::Float64),
            Clone::clone,
        )
        .cast(&DataType::Float64)?;
    let label = number.f64()?.gt(15.0).into_column();
    let mut out = vec![
        time.with_name("event_time".into()),
        Column::new("split".into(), vec!["train"; n]),
        label.with_name("label".into()),
    ];
    for i in 0..numeric {
        out.push(number.clone().with_name(format!("x{i}").into()));
    }
    let mut out = DataFrame::new(n, out)?;
    out.rechunk_mut();
    let mut writer = ParquetWriter::new(std::fs::File::create(output)?).batched(out.schema())?;
    let mut first = 0;
    while first < n {
        let len = 100_000.min(n - first);
        writer.write_batch(&out.slice(first as i64, len))?;
        first += len;
    }
    writer.finish()?;
    println!("{n}");
    Ok(())
}
