//! What the trainer's test files share: the repository, and the trainer binary run in it.
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
