//! The `scorer` command; everything lives in the library (see `lib.rs`).

fn main() -> std::process::ExitCode {
    scorer::main()
}
