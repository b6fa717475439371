//! `spate bench`: load generators and latency reports (`produce`,
//! `consume`, `e2e`, `store`, `floor`). Open loop by default: see
//! `produce.rs`; `--plot` writes a latency-by-percentile SVG.

pub mod consume;
pub mod e2e;
pub mod floor;
pub mod grpc;
pub mod procstat;
pub mod produce;
pub mod report;
pub mod store;

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Send messages and report latency percentiles and throughput.
    Produce {
        #[command(flatten)]
        args: produce::ProduceArgs,
        /// Also measure the machine's floor (loopback round trip, fdatasync).
        #[arg(long)]
        with_floor: bool,
        /// Directory for the fdatasync floor.
        #[arg(long, default_value = "spate-data")]
        dir: PathBuf,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write a latency-by-percentile plot (SVG).
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
    /// Push consumer (long polling) on a topic others produce to:
    /// throughput, born-to-consume and store-to-consume latency.
    Consume {
        #[command(flatten)]
        args: consume::ConsumeArgs,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
    /// Producer and push consumer in one process: born-to-consume latency.
    E2e {
        #[command(flatten)]
        args: e2e::E2eArgs,
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
    /// Append straight into a store in this process (no network): open-loop
    /// latency and throughput of the store alone.
    Store {
        #[command(flatten)]
        args: store::StoreArgs,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
    /// Measure this machine's floor: a blocking two-thread loopback TCP
    /// ping-pong (with each side's CPU per round trip), fdatasync, and the
    /// disk's sequential write bandwidth.
    Floor {
        /// Request size of the round trip.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Round trips measured (a tenth more run first as warm-up).
        #[arg(long, default_value_t = 20_000)]
        rounds: usize,
        /// Server thread on CPU 0 and client thread on CPU 1, as the
        /// benchmark scripts pin broker and client.
        #[arg(long)]
        pin: bool,
        /// Directory for fdatasync and the sequential write.
        #[arg(long, default_value = "spate-data")]
        dir: PathBuf,
        /// MiB written for the sequential write bandwidth (0: skip it).
        #[arg(long = "seq-write-mib", default_value_t = 256)]
        seq_write_mib: usize,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Produce { args, with_floor, dir, json, plot } => {
            check_plot_path(plot.as_deref())?;
            let mut report = produce::run(&args).await?;
            if with_floor {
                let fields = floor::floor_fields(&report, args.size, &dir).await?;
                report.extra.extend(fields);
            }
            finish(&report, json, plot.as_deref()).await?;
        }
        BenchCommand::Consume { args, json, plot } => {
            check_plot_path(plot.as_deref())?;
            finish(&consume::run(&args).await?, json, plot.as_deref()).await?;
        }
        BenchCommand::E2e { args, json, plot } => {
            check_plot_path(plot.as_deref())?;
            finish(&e2e::run(&args).await?, json, plot.as_deref()).await?;
        }
        BenchCommand::Store { args, json, plot } => {
            check_plot_path(plot.as_deref())?;
            let report = store::run(args).await?;
            report.print(json);
            write_plot(&report.report, plot.as_deref()).await?;
        }
        BenchCommand::Floor { size, rounds, pin, dir, seq_write_mib, json } => {
            let pin = pin.then_some((0, 1));
            let tcp = tokio::task::spawn_blocking(move || floor::tcp_round_trip(size, rounds, pin)).await??;
            let d = dir.clone();
            let sync = tokio::task::spawn_blocking(move || floor::fdatasync(&d, 200)).await??;
            let d = dir.clone();
            let seq = match seq_write_mib {
                0 => serde_json::Value::Null,
                mib => tokio::task::spawn_blocking(move || floor::sequential_write(&d, mib)).await??,
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"tcp_round_trip": tcp.to_json(), "fdatasync": sync.to_json(), "sequential_write": seq})
                );
            } else {
                print!("{}{}", tcp.to_table(), sync.to_table());
                if !seq.is_null() {
                    println!("sequential write: {seq}");
                }
            }
        }
    }
    Ok(())
}

/// Refuses a plot file name it cannot write before the run, not after it.
fn check_plot_path(plot: Option<&std::path::Path>) -> Result<()> {
    match plot {
        Some(p) if p.extension().and_then(|e| e.to_str()) != Some("svg") => {
            anyhow::bail!("--plot writes SVG: name the file *.svg (got {})", p.display())
        }
        _ => Ok(()),
    }
}

/// Prints the report and writes its plot, if asked for.
async fn finish(report: &report::Report, json: bool, plot: Option<&std::path::Path>) -> Result<()> {
    print(report, json);
    write_plot(report, plot).await
}

async fn write_plot(report: &report::Report, plot: Option<&std::path::Path>) -> Result<()> {
    if let Some(path) = plot {
        let title = format!("spate bench {}: {:.0} msg/s", report.name, report.throughput_per_s());
        tokio::fs::write(path, report::plot_svg(&title, &report.latency_us))
            .await
            .map_err(|e| anyhow::anyhow!("writing the plot to {}: {e}", path.display()))?;
    }
    Ok(())
}

fn print(report: &report::Report, json: bool) {
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
}
