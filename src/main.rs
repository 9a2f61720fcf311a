//! `sopr`: parse the command line, run it, turn errors into a message and an exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sopr::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async {
        match sopr::cli::run(cli).await {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::from(2)
            }
        }
    });
    // Once the command is done, only work nobody waits for is left on the
    // blocking threads, such as a router retrain that `serve` was stopped
    // during: dropping the runtime would wait for it to finish. Its result
    // is not needed, and its training lease lapses by itself.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
