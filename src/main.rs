//! The `corelb` binary.

fn main() -> std::process::ExitCode {
    corelb::cli::main()
}
