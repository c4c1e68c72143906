#![forbid(unsafe_code)]
fn main() -> std::process::ExitCode {
    engine::cli::main()
}
