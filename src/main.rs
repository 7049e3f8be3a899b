use anyhow::Context;
use tracing_subscriber::EnvFilter;

use blobcache::config::{Cli, Command, Config, LogFormat};

fn main() -> std::process::ExitCode {
    tame_malloc();
    let cli = match Cli::parse_with_file(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(usage) => usage.exit(),
            Err(e) => {
                eprintln!("blobcache: error: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    let cli = match cli.command {
        // Client commands: no server tracing; their own error lines and exit codes.
        Command::Client(cmd) => return blobcache::client::main(cmd),
        Command::Token(cmd) => return blobcache::auth::token_main(cmd),
        _ => cli,
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line that names the problem, with its causes after colons.
            eprintln!("blobcache: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig(args) => {
            let config = args.resolve()?;
            print!("{}", toml::to_string(&config).context("printing the configuration")?);
            Ok(())
        }
        Command::Serve(args) => {
            let config = args.resolve()?;
            let _flush_logs_at_exit = init_tracing(&config);
            tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "effective configuration");
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("--listen {}", config.listen))?;
            blobcache::app::run(listener, config, shutdown_signal()).await
        }
        Command::Client(_) | Command::Token(_) => unreachable!("client and token commands return from main"),
    }
}

/// Log to stdout through a writer thread, so a request never waits on a
/// `write(2)` of its log line, and that thread writes lines in batches;
/// colour only when stdout is a terminal. The
/// guard flushes what is queued when it drops, at exit.
fn init_tracing(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal();
    // Not lossy: under a flood of requests the writer slows them rather than drop lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(blobcache::logwriter::Batched::stdout());
    if !ansi {
        // Request lines are written by the HTTP layer itself, to the same writer.
        blobcache::http::access_log::install(config.log_format, writer.clone());
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Chunks are 4 MiB buffers allocated and freed on many threads. glibc raises
/// its mmap threshold after such a free, so later chunks land in per-thread
/// arenas that keep their freed memory: RSS then grows far past the cache
/// size. A fixed threshold keeps every chunk in its own mapping, returned to
/// the system when freed.
fn tame_malloc() {
    // SAFETY: mallopt only sets an allocator parameter; it runs before the runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}
