use std::process::ExitCode;

use clap::Parser;
use replicator::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // These two print a report on stdout: their logs go to stderr, out of its way.
    let report = matches!(
        cli.command,
        cli::Command::Status(_) | cli::Command::Check(_)
    );
    if let Err(e) = replicator::logging::init_to(Some(&cli.log_format), report) {
        eprintln!("replicator: {e}");
        return ExitCode::from(cli::exit::CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("replicator: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::FAILED);
        }
    };
    runtime.block_on(cli::main(cli))
}
