//! What a benchmark run cost the servers it talked to, from `/proc`: CPU
//! time and context switches of every process on this machine that listens
//! on a port the benchmark is connected to (a standalone broker and its
//! name server are one such process), and of the benchmark itself, over
//! the measured window only. Linux only; elsewhere the fields are left out.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Map, Value};

/// A measured window: a snapshot taken at its start by a task of its own,
/// and one taken when the run asks for the fields, at its end.
pub struct Window(tokio::task::JoinHandle<Snapshot>);

impl Window {
    pub fn start(from: std::time::Instant) -> Window {
        Window(tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            tokio::task::spawn_blocking(Snapshot::take).await.unwrap_or_default()
        }))
    }

    /// Ends the window now: its fields per `units` (see [`Snapshot::fields`]).
    pub async fn fields(self, units: u64, unit: &str) -> Map<String, Value> {
        let Ok(before) = self.0.await else { return Map::new() };
        let after = tokio::task::spawn_blocking(Snapshot::take).await.unwrap_or_default();
        before.fields(&after, units, unit)
    }
}

/// CPU time and context switches of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu: Duration,
    switches: u64,
}

/// A snapshot of the benchmark process and the local servers it talks to.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    client: Usage,
    servers: HashMap<u32, Usage>,
    steal_ms: Vec<u64>,
}

impl Snapshot {
    /// Reads `/proc` (blocking; call it off the async workers).
    pub fn take() -> Snapshot {
        let me = std::process::id();
        let servers =
            local_server_pids().into_iter().filter(|p| *p != me).filter_map(|p| Some((p, usage(p)?))).collect();
        Snapshot { client: usage(me).unwrap_or_default(), servers, steal_ms: steal_ms_per_cpu() }
    }

    /// Report fields for the window from `self` to `later`, per `units`
    /// (requests or messages, named by `unit`).
    pub fn fields(&self, later: &Snapshot, units: u64, unit: &str) -> Map<String, Value> {
        let mut m = Map::new();
        if units == 0 {
            return m;
        }
        let per = |d: Duration| (d.as_secs_f64() * 1e6 / units as f64 * 100.0).round() / 100.0;
        let per_n = |n: u64| (n as f64 / units as f64 * 1000.0).round() / 1000.0;
        let (mut cpu, mut switches, mut pids) = (Duration::ZERO, 0u64, Vec::new());
        for (pid, after) in &later.servers {
            if let Some(before) = self.servers.get(pid) {
                cpu += after.cpu.saturating_sub(before.cpu);
                switches += after.switches.saturating_sub(before.switches);
                pids.push(*pid);
            }
        }
        if !pids.is_empty() {
            pids.sort_unstable();
            m.insert("broker_pids".into(), pids.into());
            m.insert(format!("broker_cpu_us_per_{unit}"), per(cpu).into());
            m.insert(format!("broker_switches_per_{unit}"), per_n(switches).into());
        }
        if let Some(steal) = steal_between(&self.steal_ms, &later.steal_ms) {
            m.insert("cpu_steal_ms".into(), steal.into());
        }
        m.insert(format!("client_cpu_us_per_{unit}"), per(later.client.cpu.saturating_sub(self.client.cpu)).into());
        m.insert(
            format!("client_switches_per_{unit}"),
            per_n(later.client.switches.saturating_sub(self.client.switches)).into(),
        );
        m
    }
}

/// `utime + stime` and the context switches of all threads of `pid`.
fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13
    // after the pid and the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += n.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(Usage { cpu: Duration::from_micros(ticks * 1_000_000 / hz), switches })
}

/// One row of `/proc/net/tcp{,6}`: local and remote address (hex, as the
/// kernel prints them), state, socket inode.
struct TcpRow {
    local_port: u16,
    remote_ip: String,
    remote_port: u16,
    state: String,
    inode: u64,
}

fn tcp_rows() -> Vec<TcpRow> {
    let mut rows = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) = (f.get(1), f.get(2), f.get(3), f.get(9)) else {
                continue;
            };
            let split = |a: &str| a.split_once(':').map(|(ip, port)| (ip.to_string(), u16::from_str_radix(port, 16)));
            let (Some((_, Ok(local_port))), Some((remote_ip, Ok(remote_port))), Ok(inode)) =
                (split(local), split(remote), inode.parse())
            else {
                continue;
            };
            rows.push(TcpRow { local_port, remote_ip, remote_port, state: state.to_string(), inode });
        }
    }
    rows
}

/// Whether a kernel-printed remote address is a loopback one: 127.0.0.0/8
/// (little-endian hex, so its last byte), `::1`, or `::ffff:127.x.y.z`.
fn is_loopback_hex(ip: &str) -> bool {
    match ip.len() {
        8 => ip.ends_with("7F"),
        32 => {
            ip == "00000000000000000000000001000000"
                || (ip.starts_with("0000000000000000FFFF0000") && ip.ends_with("7F"))
        }
        _ => false,
    }
}

/// Socket inodes among the open files of `pid`.
fn socket_inodes(pid: &str) -> BTreeSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return BTreeSet::new() };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Processes listening on a loopback port this process is connected to.
fn local_server_pids() -> BTreeSet<u32> {
    let rows = tcp_rows();
    let mine = socket_inodes("self");
    // 01: ESTABLISHED, 0A: LISTEN.
    let ports: BTreeSet<u16> = rows
        .iter()
        .filter(|r| r.state == "01" && mine.contains(&r.inode) && is_loopback_hex(&r.remote_ip))
        .map(|r| r.remote_port)
        .collect();
    let listening: BTreeSet<u64> =
        rows.iter().filter(|r| r.state == "0A" && ports.contains(&r.local_port)).map(|r| r.inode).collect();
    if listening.is_empty() {
        return BTreeSet::new();
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return BTreeSet::new() };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| !socket_inodes(&pid.to_string()).is_disjoint(&listening))
        .collect()
}

/// Time the hypervisor gave each of this VM's CPUs to something else
/// (`steal` in `/proc/stat`), in milliseconds since boot, CPU by CPU;
/// empty where `/proc/stat` cannot be read. On a shared VM the disk's
/// writes can cost the guest stolen time: a tail that a run without I/O
/// never shows.
pub fn steal_ms_per_cpu() -> Vec<u64> {
    // SAFETY: sysconf only reads a constant of the C library.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return Vec::new() };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| l.split_whitespace().nth(8).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0) * 1000 / hz)
        .collect()
}

/// Stolen milliseconds per CPU from `before` to `after`, when both were read.
pub fn steal_between(before: &[u64], after: &[u64]) -> Option<Vec<u64>> {
    (!before.is_empty() && before.len() == after.len())
        .then(|| before.iter().zip(after).map(|(b, a)| a.saturating_sub(*b)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_local_server_and_its_usage() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _accepted = listener.accept().unwrap();
        // The listener is this process, so it is found, and filtered out
        // by `Snapshot::take` (the benchmark is not its own server).
        assert!(local_server_pids().contains(&std::process::id()));
        let u = usage(std::process::id()).unwrap();
        assert!(u.switches > 0);
        assert!(is_loopback_hex("0100007F"));
        assert!(!is_loopback_hex("0100000A"));
        assert!(is_loopback_hex("00000000000000000000000001000000"));
    }

    #[test]
    fn steal_is_read_per_cpu_and_differenced_only_when_both_sides_match() {
        let now = steal_ms_per_cpu();
        assert!(!now.is_empty(), "this test runs on Linux, where /proc/stat lists every CPU");
        assert_eq!(steal_between(&now, &now), Some(vec![0; now.len()]));
        assert_eq!(steal_between(&[5, 7], &[9, 7]), Some(vec![4, 0]));
        assert_eq!(steal_between(&[5, 7], &[9]), None, "a CPU came or went");
        assert_eq!(steal_between(&[], &[]), None, "nothing read");
    }
}
