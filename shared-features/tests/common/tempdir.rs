//! A test's directory, removed when dropped and kept when the test fails (to look into). The
//! scorer's tests include this file too (`#[path]`): the two crates' harnesses share no crate.

use std::path::{Path, PathBuf};

/// A test's directory ([`TempDir::fresh`]).
pub struct TempDir(PathBuf);

impl TempDir {
    /// `path`, emptied (a run before may have left it) and created.
    pub fn fresh(path: PathBuf) -> Self {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
