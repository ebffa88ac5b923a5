use std::process::ExitCode;

use clap::Parser;
use replicator::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = replicator::logging::init(Some(&cli.log_format)) {
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
