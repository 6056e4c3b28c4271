//! What the trainer's test files share: the repository, the trainer binary run in it, and the
//! fixtures' CSV as a frame.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run the trainer in the repository with `args`.
pub fn trainer(args: &[&str]) -> std::process::Output {
    trainer_env(args, &[])
}

/// [`trainer`] with `env` set.
pub fn trainer_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo())
        .output()
        .expect("trainer runs")
}

/// The arguments of `command` over the flights pipeline on the fixture days' tables, with
/// validation from 2013-01-03; more flags follow.
pub fn on_fixtures(command: &str) -> Vec<&str> {
    vec![
        command,
        "--pipeline",
        "data/flights/pipeline.toml",
        "--base",
        "data/flights/fixtures",
        "--valid-from",
        "2013-01-03",
    ]
}

/// A CSV history (`NA` as null) as a polars frame, in the file's order.
pub fn read_csv(csv: &Path) -> polars::prelude::DataFrame {
    use polars::prelude::*;
    CsvReadOptions::default()
        .with_has_header(true)
        .map_parse_options(|o| o.with_null_values(Some(NullValues::AllColumns(vec!["NA".into()]))))
        .try_into_reader_with_file_path(Some(csv.to_path_buf()))
        .unwrap()
        .finish()
        .unwrap()
}
