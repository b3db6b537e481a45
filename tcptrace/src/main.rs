fn main() -> std::process::ExitCode {
    tcptrace::main()
}
