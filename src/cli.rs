//! The `corelb` command line: `run` (the default) and `check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{load_config, IoDriverChoice, LoadError};
use crate::control::{load_terminations, resolve_backends, Control};

/// Exit status for a config that cannot be used.
const EXIT_CONFIG: u8 = 2;
/// Exit status for a failure while starting or running.
const EXIT_RUNTIME: u8 = 1;

#[derive(Debug, Parser)]
#[command(name = "corelb", version, about = "Thread-per-core HTTP load balancer on io_uring")]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the load balancer (the default when no subcommand is given).
    Run(RunArgs),
    /// Validate a config file and print every problem found; exit 0 when valid, 2 when not.
    Check(CheckArgs),
    /// Talk to a running corelb through its control socket.
    Ctl(crate::ctl::CtlArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Config file to use.
    #[arg(short, long, default_value = "config.toml")]
    config: PathBuf,
    /// Force the I/O driver, overriding server.io_driver.
    #[arg(long, value_enum)]
    io_driver: Option<DriverArg>,
}

#[derive(Debug, Clone, clap::Args)]
struct CheckArgs {
    /// Config file to validate.
    #[arg(short, long, default_value = "config.toml")]
    config: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DriverArg {
    Auto,
    #[value(name = "io_uring", alias = "io-uring")]
    IoUring,
    Epoll,
}

impl From<DriverArg> for IoDriverChoice {
    fn from(driver: DriverArg) -> IoDriverChoice {
        match driver {
            DriverArg::Auto => IoDriverChoice::Auto,
            DriverArg::IoUring => IoDriverChoice::IoUring,
            DriverArg::Epoll => IoDriverChoice::Epoll,
        }
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check(args)) => check(&args.config),
        Some(Command::Run(args)) => run(&args),
        Some(Command::Ctl(args)) => crate::ctl::run(&args),
        None => run(&cli.run),
    }
}

fn report_load_error(error: &LoadError) {
    eprintln!("error: {error}");
}

fn check(path: &Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(error) => {
            report_load_error(&error);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(error) = resolve_backends(&config) {
        eprintln!("error: {} is invalid:\n{error}", path.display());
        return ExitCode::from(EXIT_CONFIG);
    }
    let terminations = match load_terminations(&config) {
        Ok(terminations) => terminations,
        Err(error) => {
            eprintln!("error: {} is invalid:\n{error}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    report_certificates(&config, &terminations);
    println!(
        "{}: ok ({} frontend(s), {} backend(s), {:?})",
        path.display(),
        config.frontends.len(),
        config.backends.len(),
        config.balancer.algorithm
    );
    ExitCode::SUCCESS
}

/// Each certificate in force, with what is worth knowing about it (expiring soon, a chain out of order) as
/// warnings: they do not fail the check.
fn report_certificates(config: &crate::config::Config, terminations: &[Option<crate::tls::termination::Termination>]) {
    let now = std::time::SystemTime::now();
    for (frontend, termination) in config.frontends.iter().zip(terminations) {
        let Some(termination) = termination else {
            continue;
        };
        for certificate in &termination.certificates {
            println!(
                "frontend {}: {} for {} expires in {} day(s)",
                frontend.name,
                certificate.cert_path.display(),
                certificate.names.join(", "),
                certificate.expires_in(now).as_secs() / 86_400
            );
            for finding in crate::tls::audit::findings(certificate, now) {
                eprintln!(
                    "warning: frontend {}: {}: {finding}",
                    frontend.name,
                    certificate.cert_path.display()
                );
            }
        }
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let config = match load_config(&args.config) {
        Ok(config) => config,
        Err(error) => {
            report_load_error(&error);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _log = crate::logging::init(&config.logging);
    let control = match Control::start(&args.config, config, args.io_driver.map(IoDriverChoice::from)) {
        Ok(control) => control,
        Err(error) => {
            tracing::error!(error = %error, "corelb failed to start");
            return ExitCode::from(match error {
                crate::control::StartError::Resolve(_) => EXIT_CONFIG,
                _ => EXIT_RUNTIME,
            });
        }
    };
    match control.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "corelb stopped with an error");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
