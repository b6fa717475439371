//! The `spate` binary: command line, configuration loading, signals.
//!
//! Today it runs the store alone (`spate standalone`); the name server and
//! the broker's network side arrive with the remoting layer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use spate_store::{MessageStore, StoreConfig};

#[derive(Parser)]
#[command(name = "spate", version, about = "Spate: a RocketMQ-compatible message engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Spate on one machine with zero setup (data under ./spate-data).
    Standalone {
        /// Store root (RocketMQ's storePathRootDir).
        #[arg(long, default_value = "spate-data")]
        data_dir: PathBuf,
        /// A broker.conf-style properties file with store settings.
        #[arg(short = 'c', long)]
        config: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Command::Standalone { data_dir, config } => standalone(&data_dir, config.as_deref()),
    }
}

fn standalone(data_dir: &Path, config_file: Option<&Path>) -> Result<()> {
    let started = Instant::now();
    let mut config = StoreConfig::new(data_dir);
    if let Some(path) = config_file {
        apply_properties(&mut config, path)?;
    }
    let store = MessageStore::open(config).context("opening the store")?;
    let r = store.recovery();
    tracing::info!(
        data_dir = %data_dir.display(),
        end_offset = r.end_offset,
        after_crash = r.after_crash,
        ready_ms = started.elapsed().as_millis() as u64,
        "spate standalone ready (store only: the broker and name server ports come with the remoting layer)"
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(wait_for_signal())?;
    tracing::info!("shutting down: flushing and writing the checkpoint");
    store.shutdown().context("clean shutdown")?;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Reads `key=value` lines (RocketMQ's properties format, `#` comments) into
/// the store settings. Unknown keys warn; bad values refuse to start.
fn apply_properties(config: &mut StoreConfig, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((key, value)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            bail!("{}:{}: expected key=value", path.display(), n + 1);
        };
        let key = key.trim();
        let known = config.set(key, value).with_context(|| format!("{}:{}", path.display(), n + 1))?;
        if !known {
            tracing::warn!(key, file = %path.display(), "unknown setting ignored");
        }
    }
    Ok(())
}
