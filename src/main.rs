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
        /// Drop root to this user (and its groups) once the listeners are bound and the
        /// interception CA is loaded; the cache dir must be writable by it.
        #[arg(long = "user", value_name = "NAME")]
        user: Option<String>,
    },
    /// Validate a config: exit 0, or print every problem and exit 2.
    Check {
        /// Path to the YAML config.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Manage the interception CA (`tls-interceptor`).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Write a new P-256 CA (DIR/ca.crt, mode 0644; DIR/ca.key, mode 0600) for
    /// `tls-interceptor`.
    Create {
        /// Directory to write ca.crt and ca.key into (created if missing).
        #[arg(long = "out")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long = "days", default_value_t = chacha::tls::DEFAULT_CA_DAYS)]
        days: u32,
        /// Subject common name.
        #[arg(long = "name", default_value = chacha::tls::DEFAULT_CA_NAME)]
        name: String,
        /// Replace existing ca.crt / ca.key.
        #[arg(long = "force")]
        force: bool,
    },
}

/// Exit code for an unusable config (before anything listens).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(chacha::server::accesslog::format_record)
        .init();
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
        Command::Ca {
            command:
                CaCommand::Create {
                    out,
                    days,
                    name,
                    force,
                },
        } => {
            let opts = chacha::tls::CaOptions {
                out,
                days,
                name,
                force,
            };
            match chacha::tls::create_ca(&opts) {
                Ok(ca) => {
                    println!(
                        "wrote {} (mode 0644) and {} (mode 0600), valid for {days} days; use:\n\
                         tls-interceptor:\n  cert: {}\n  key: {}\n\
                         and install {} in the clients' trust stores",
                        ca.cert.display(),
                        ca.key.display(),
                        ca.cert.display(),
                        ca.key.display(),
                        ca.cert.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("chacha ca create: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { file, user } => {
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
            let opts = chacha::app::RunOptions {
                user,
                config_path: file,
            };
            let code = chacha::app::run_with(config, &opts);
            ExitCode::from(code as u8)
        }
    }
}
