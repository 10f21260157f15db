//! `chacha`: command line, logging, exit codes. Wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A thread-per-core caching HTTP forward proxy for CI caches and VM-image pulls.
#[derive(Parser)]
#[command(name = "chacha", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (without -f: the built-in copy of examples/config.yaml).
    Run {
        /// Path to the YAML config.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Validate a config: exit 0, or print every problem and exit 2.
    Check {
        /// Path to the YAML config.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

/// Exit code for an unusable config (before anything listens).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => match chacha::config::load(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { file } => {
            let loaded = match &file {
                Some(file) => chacha::config::load(file),
                None => {
                    log::info!(
                        "no -f given: using the built-in example config (examples/config.yaml)"
                    );
                    chacha::config::parse(chacha::config::EXAMPLE_CONFIG)
                }
            };
            let config = match loaded {
                Ok(c) => c,
                Err(e) => {
                    log::error!("invalid config:\n{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let code = chacha::app::run(config);
            ExitCode::from(code as u8)
        }
    }
}
