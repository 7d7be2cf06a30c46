fn main() -> std::process::ExitCode {
    relay_sim::cli::main()
}
