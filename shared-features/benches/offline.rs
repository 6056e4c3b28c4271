//! Offline engine throughput over the flights history, side by side with polars reading the
//! same CSV columns (the baseline: what any polars pipeline pays before computing anything).

// A benchmark whose setup fails has nothing to measure: stopping loudly is right.
#![allow(clippy::expect_used)]

mod common;

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use polars::prelude::*;
use shared_features::offline;

fn offline_engine(c: &mut Criterion) {
    let (p, base) = common::flights();
    let events = base.join("raw/flights.csv");
    let records = offline::run(&p, &events, &base)
        .map(|r| r.rows.len() + r.filtered + r.rejected.len())
        .expect("offline run");
    let names: Arc<[PlSmallStr]> = p
        .fields()
        .iter()
        .map(|c| PlSmallStr::from(c.name.as_str()))
        .collect();

    let mut g = c.benchmark_group("offline");
    g.sample_size(10);
    g.throughput(Throughput::Elements(records as u64));
    g.bench_function("baseline_polars_read_csv", |b| {
        b.iter(|| {
            CsvReadOptions::default()
                .with_has_header(true)
                .with_columns(Some(names.clone()))
                .map_parse_options(|o| {
                    o.with_null_values(Some(NullValues::AllColumnsSingle("NA".into())))
                })
                .try_into_reader_with_file_path(Some(events.clone()))
                .and_then(|r| r.finish())
                .map(|df| df.height())
                .expect("read")
        })
    });
    g.bench_function("pipeline", |b| {
        b.iter(|| {
            offline::run(&p, &events, &base)
                .map(|r| r.rows.len())
                .expect("run")
        })
    });
    g.finish();
}

criterion_group!(benches, offline_engine);
criterion_main!(benches);
