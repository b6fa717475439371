//! `spate bench floor`: this machine's physical floor, measured the same
//! way a benchmark run is, so every report can say how far above it Spate
//! is: a loopback TCP round trip carrying a message-sized request and a
//! small answer, and `fdatasync` of a freshly written page in the data
//! directory.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::report::{histogram, Report};

/// Bytes of the answer in the round trip (about a send response).
const ANSWER_BYTES: usize = 128;

/// Round trips of `size` bytes out and ANSWER_BYTES back over loopback.
pub async fn tcp_round_trip(size: usize, rounds: usize) -> Result<Report> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let _ = s.set_nodelay(true);
        let mut buf = vec![0u8; size];
        let answer = [0u8; ANSWER_BYTES];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&answer).await.is_err() {
                return;
            }
        }
    });
    let mut c = TcpStream::connect(addr).await?;
    c.set_nodelay(true)?;
    let request = vec![1u8; size];
    let mut answer = [0u8; ANSWER_BYTES];
    let mut h = histogram();
    let started = Instant::now();
    for i in 0..rounds + rounds / 10 {
        let t = Instant::now();
        c.write_all(&request).await?;
        c.read_exact(&mut answer).await?;
        if i >= rounds / 10 {
            let _ = h.record(t.elapsed().as_micros().max(1) as u64);
        }
    }
    drop(c);
    let _ = server.await;
    Ok(Report {
        name: "floor_tcp_round_trip",
        elapsed: started.elapsed(),
        sent_ok: h.len(),
        latency_us: h,
        errors: Default::default(),
        extra: Default::default(),
    })
}

/// `fdatasync` after rewriting one 4 KiB page of a file in `dir`.
pub fn fdatasync(dir: &Path, rounds: usize) -> Result<Report> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(".spate-floor-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let page = [7u8; 4096];
    let mut h = histogram();
    let started = Instant::now();
    let result = (|| -> std::io::Result<()> {
        for i in 0..rounds {
            f.write_all(&page)?;
            let t = Instant::now();
            f.sync_data()?;
            let _ = h.record(t.elapsed().as_micros().max(1) as u64);
            if i % 64 == 63 {
                f.set_len(0)?;
                std::io::Seek::rewind(&mut f)?;
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("fdatasync in {}", dir.display()))?;
    Ok(Report {
        name: "floor_fdatasync",
        elapsed: started.elapsed(),
        sent_ok: h.len(),
        latency_us: h,
        errors: Default::default(),
        extra: Default::default(),
    })
}

/// Both floors as extra report fields.
pub async fn floor_fields(size: usize, dir: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let tcp = tcp_round_trip(size, 5_000).await?;
    let dir = dir.to_path_buf();
    let sync = tokio::task::spawn_blocking(move || fdatasync(&dir, 200)).await??;
    let mut m = serde_json::Map::new();
    for (name, r) in [("floor_tcp_rtt", &tcp), ("floor_fdatasync", &sync)] {
        m.insert(format!("{name}_p50_us"), r.latency_us.value_at_quantile(0.5).into());
        m.insert(format!("{name}_p99_us"), r.latency_us.value_at_quantile(0.99).into());
    }
    Ok(m)
}
