//! The `sluice` command: run the pooler, or check a configuration file.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// PostgreSQL connection pooler.
#[derive(Parser)]
#[command(name = "sluice", version, about = "PostgreSQL connection pooler")]
struct Cli {
    /// Configuration file (TOML) to run with.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Run even as root (containers, tests); like PostgreSQL and PgBouncer, sluice otherwise
    /// refuses to.
    #[arg(long, global = true)]
    allow_root: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pooler (the default when --config is given).
    Run {
        /// Configuration file (TOML).
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit: 0 when valid, 1 with every problem otherwise.
    Check {
        /// Configuration file (TOML).
        #[arg(value_name = "FILE")]
        config: PathBuf,
    },
    /// Convert a PgBouncer pgbouncer.ini (and its %include files) to sluice's TOML on stdout;
    /// keys that cannot be converted are kept as comments, and those whose loss changes
    /// behaviour are warned about on stderr.
    Convert {
        /// PgBouncer's configuration file (INI).
        #[arg(value_name = "PGBOUNCER_INI")]
        ini: PathBuf,
    },
}

/// jemalloc, not glibc's malloc: with thousands of clients logging in at once, glibc leaves the
/// freed login memory scattered between long-lived objects (about 300 bytes per idle client at
/// 10,000, measured by bench/idle_clients.sh); jemalloc's size classes keep it together and give
/// it back (1.83 -> 1.36 KiB per idle client, same CPU per transaction). Built with background
/// threads on (Cargo feature `background_threads`): jemalloc returns freed pages to the OS only
/// when its arenas are next used, or from those threads; without them, the 180 MB four clients'
/// prepared statements took stayed resident while the pooler sat idle after they left. With
/// them, RSS is back within 10 MB about 10 s (dirty_decay_ms) later (bench/prepared_memory.sh).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `sluice convert`: the TOML on stdout, warnings on stderr; 1 when the file cannot be read.
fn convert(ini: &std::path::Path) -> ExitCode {
    match sluice::convert::convert_file(ini) {
        Ok(conversion) => {
            for w in &conversion.warnings {
                eprintln!("sluice convert: warning: {w}");
            }
            print!("{}", conversion.toml);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice convert: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    sluice::handover::remember_command_line();
    // Set when an upgrade's old process started this one (docs/upgrades.md).
    let upgrade_fd = std::env::var(sluice::handover::CHANNEL_FD_VAR)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    let cli = Cli::parse();
    let (path, check_only) = match (cli.command, cli.config) {
        (Some(Command::Convert { ini }), _) => return convert(&ini),
        (Some(Command::Check { config }), _) => (config, true),
        (Some(Command::Run { config }), _) => (config, false),
        (None, Some(config)) => (config, false),
        (None, None) => {
            eprintln!("sluice: no configuration given; use `sluice --config FILE` or `sluice check FILE`");
            return ExitCode::from(2);
        }
    };
    let config = match sluice::Config::load_all_problems(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("sluice: invalid configuration: {e}");
            }
            if errors.len() > 1 {
                eprintln!("sluice: {} problems in {}", errors.len(), path.display());
            }
            return ExitCode::from(1);
        }
    };
    if check_only {
        println!("{}: configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }
    if sluice::service::running_as_root() && !cli.allow_root {
        eprintln!(
            "sluice: running as root is not permitted\n\
             HINT: start sluice as an unprivileged user (packaging/sluice.service uses the user \
             \"sluice\"), or pass --allow-root if you really mean to"
        );
        return ExitCode::from(1);
    }
    let log_file = match &config.pooler.logfile {
        Some(p) => match sluice::logging::LogFile::open(p) {
            Ok(f) => Some(std::sync::Arc::new(f)),
            Err(e) => {
                eprintln!("sluice: cannot open logfile {}: {e}", p.display());
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    sluice::logging::init(config.pooler.log_format, log_file.clone());
    // Held until main returns: removed at exit.
    let _pidfile = match &config.pooler.pidfile {
        // An upgrade's new process takes the file over once the old one has handed over.
        Some(_) if upgrade_fd.is_some() => None,
        Some(p) => match sluice::service::pidfile::PidFile::create(p) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    sluice::service::fdlimit::raise_and_check(&config);
    let workers = match config.pooler.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Per-core: this thread only accepts and runs the process-wide tasks (timers, console
    // lookups, signals); sessions run on the `workers` threads that `start` creates. Shared:
    // one runtime for everything (current-thread with one worker: no work-stealing).
    let per_core = config.pooler.runtime == sluice::config::RuntimeKind::PerCore;
    let mut builder = if workers == 1 || per_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let started = match upgrade_fd {
            Some(fd) => sluice::handover::take_over(config, fd).await,
            None => sluice::start(config).await,
        };
        let pooler = match started {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some(f) = log_file {
            let _ = pooler.shared().log_file.set(f);
        }
        // An upgrade's new process tells systemd once the old one has handed everything over.
        if upgrade_fd.is_none() {
            sluice::service::notify::ready(&sluice::service::status_line(pooler.shared()));
        }
        run_until_exit(&pooler).await;
        pooler.finish().await;
        tracing::info!("sluice stopped");
        ExitCode::SUCCESS
    })
}

/// How long a stopped process waits for an upgrade it runs to end (the new process's answers
/// for the last clients and its Bye).
const UPGRADE_END_LIMIT: std::time::Duration = std::time::Duration::from_secs(15);

/// An upgrade in progress (`sluice::handover::hand_over`): Ok once done, Err if abandoned.
type Upgrade<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// Serves until the pooler exits: SIGHUP reloads the configuration, SIGTERM drains until the
/// clients leave (WAIT_FOR_CLIENTS), SIGINT until transactions finish (WAIT_FOR_SERVERS); a
/// second SIGTERM/SIGINT exits at once. SIGUSR2 upgrades: the binary at the same path takes
/// over the listeners and the clients (docs/upgrades.md).
async fn run_until_exit(pooler: &sluice::RunningPooler) {
    use sluice::shared::ShutdownMode;
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr2)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined2()),
    ) else {
        tracing::error!("cannot install signal handlers; running until the console says SHUTDOWN");
        pooler.exited().await;
        return;
    };
    let shared = pooler.shared().clone();
    // The upgrade running (SIGUSR2), if any; `handed_over` once one succeeded (exiting now).
    let mut upgrade: Option<Upgrade<'_>> = None;
    let mut handed_over = false;
    loop {
        tokio::select! {
            _ = pooler.exited() => {
                // Stopped during an upgrade: the hand-over ends first (the new process, told
                // to stop as well, takes over the pidfile and systemd's main pid, and stops
                // once its own clients allow).
                if let Some(running) = upgrade.take() {
                    let _ = tokio::time::timeout(UPGRADE_END_LIMIT, running).await;
                }
                return;
            }
            _ = usr2.recv() => {
                if upgrade.is_some() || handed_over {
                    tracing::warn!("SIGUSR2: an upgrade is already running or done; ignored");
                } else {
                    tracing::info!("SIGUSR2: upgrading (the binary at the same path takes over)");
                    upgrade = Some(Box::pin(sluice::handover::hand_over(pooler)));
                }
            }
            done = async {
                match upgrade.as_mut() {
                    Some(running) => running.await,
                    None => std::future::pending().await,
                }
            }, if upgrade.is_some() => {
                // Ok: the pooler is exiting. Err: it serves on; a later SIGUSR2 tries again.
                upgrade = None;
                handed_over = done.is_ok();
            }
            _ = hup.recv() => match sluice::service::reload(&shared) {
                Ok(()) => tracing::info!("configuration reloaded"),
                Err(e) => tracing::error!(error = %e, "reload failed; keeping the old configuration"),
            },
            _ = term.recv() => {
                tracing::info!("SIGTERM: shutting down once clients leave (a second signal exits now)");
                shared.shutdown(Some(ShutdownMode::WaitForClients));
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: shutting down once transactions finish (a second signal exits now)");
                shared.shutdown(Some(ShutdownMode::WaitForServers));
            }
        }
    }
}
