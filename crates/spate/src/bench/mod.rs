//! `spate bench`: load generators and latency reports (`produce`,
//! `floor`). Open loop by default: see `produce.rs`.

pub mod e2e;
pub mod floor;
pub mod produce;
pub mod report;

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
    },
    /// Producer and push consumer in one process: born-to-consume latency.
    E2e {
        #[command(flatten)]
        args: e2e::E2eArgs,
        #[arg(long)]
        json: bool,
    },
    /// Measure this machine's floor: loopback TCP round trip and fdatasync.
    Floor {
        /// Request size of the round trip.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Directory for fdatasync.
        #[arg(long, default_value = "spate-data")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Produce { args, with_floor, dir, json } => {
            let mut report = produce::run(&args).await?;
            if with_floor {
                report.extra.extend(floor::floor_fields(args.size, &dir).await?);
            }
            print(&report, json);
        }
        BenchCommand::E2e { args, json } => print(&e2e::run(&args).await?, json),
        BenchCommand::Floor { size, dir, json } => {
            let tcp = floor::tcp_round_trip(size, 5_000).await?;
            let d = dir.clone();
            let sync = tokio::task::spawn_blocking(move || floor::fdatasync(&d, 200)).await??;
            if json {
                println!("{}", serde_json::json!({"tcp_round_trip": tcp.to_json(), "fdatasync": sync.to_json()}));
            } else {
                print!("{}{}", tcp.to_table(), sync.to_table());
            }
        }
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
