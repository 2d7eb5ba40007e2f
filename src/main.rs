fn main() -> std::process::ExitCode {
    budgetd::cli::main()
}
