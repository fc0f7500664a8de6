//! `sluice`: the admin API's command line (see `sluice_mta::cli`).

fn main() -> std::process::ExitCode {
    sluice_mta::cli::main()
}
