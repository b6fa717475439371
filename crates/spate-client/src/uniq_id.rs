//! Client-made message ids (the `UNIQ_KEY` property), in the layout of
//! upstream's `MessageClientIDSetter`: 16 bytes as 32 upper-case hex characters,
//!
//! ```text
//! ip 4 | pid 2 (low 16 bits) | class-loader hash 4 | ms since start of month 4 | counter 2
//! ```
//!
//! The first 10 bytes are fixed per process. Spate has no class loader; a
//! random number drawn once per process stands in for its hash. The month
//! starts at 00:00 UTC (upstream uses the JVM's zone; the id stays unique).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// Length of an id in hex characters.
pub const UNIQ_ID_HEX_LEN: usize = 32;

const MS_PER_DAY: i64 = 86_400_000;

/// Makes unique ids; one per process is enough (see [`next_uniq_id`]).
#[derive(Debug)]
pub struct UniqIdGenerator {
    prefix: String,
    // (start of current month, start of next month), ms since the epoch.
    month: Mutex<(i64, i64)>,
    counter: AtomicU16,
}

impl UniqIdGenerator {
    /// A generator for this host address, process id and stand-in loader hash.
    pub fn new(ip: Ipv4Addr, pid: u32, loader_hash: i32) -> Self {
        let mut fixed = [0u8; 10];
        fixed[..4].copy_from_slice(&ip.octets());
        fixed[4..6].copy_from_slice(&(pid as u16).to_be_bytes());
        fixed[6..].copy_from_slice(&loader_hash.to_be_bytes());
        UniqIdGenerator { prefix: hex(&fixed), month: Mutex::new((0, 0)), counter: AtomicU16::new(0) }
    }

    /// The next id, stamped with the current time.
    pub fn next_id(&self) -> String {
        self.next_id_at(now_ms())
    }

    /// The next id, stamped with `now_ms` (ms since the epoch).
    pub fn next_id_at(&self, now_ms: i64) -> String {
        let start = {
            let mut m = self.month.lock();
            if now_ms >= m.1 || now_ms < m.0 {
                *m = month_bounds(now_ms);
            }
            m.0
        };
        let mut tail = [0u8; 6];
        tail[..4].copy_from_slice(&((now_ms - start) as i32).to_be_bytes());
        tail[4..].copy_from_slice(&self.counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        let mut id = String::with_capacity(UNIQ_ID_HEX_LEN);
        id.push_str(&self.prefix);
        id.push_str(&hex(&tail));
        debug_assert_eq!(id.len(), UNIQ_ID_HEX_LEN);
        id
    }
}

static GENERATOR: OnceLock<UniqIdGenerator> = OnceLock::new();

/// The next id from the process-wide generator. `client_ip` is used by the
/// first call only; an IPv6 or unparsable address gets a time-derived stand-in
/// as upstream does.
pub fn next_uniq_id(client_ip: &str) -> String {
    GENERATOR
        .get_or_init(|| {
            let ip = match client_ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => v4,
                _ => {
                    let b = (now_ms() as u64).to_be_bytes();
                    Ipv4Addr::new(b[4], b[5], b[6], b[7])
                }
            };
            UniqIdGenerator::new(ip, std::process::id(), rand::random())
        })
        .next_id()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    spate_common::message::hex_upper(bytes)
}

/// Start of the UTC month holding `ms`, and start of the next month.
fn month_bounds(ms: i64) -> (i64, i64) {
    let (y, m, _) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (days_from_civil(y, m, 1) * MS_PER_DAY, days_from_civil(ny, nm, 1) * MS_PER_DAY)
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, UTC).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn layout_is_ip_pid_hash_time_counter() {
        let g = UniqIdGenerator::new(Ipv4Addr::new(10, 0, 0, 1), 0x0001_2345, 0x0A0B_0C0D);
        // 2024-03-01T00:00:01.500Z: 1500 ms into the month.
        let id = g.next_id_at(1_709_251_201_500);
        assert_eq!(id.len(), UNIQ_ID_HEX_LEN);
        assert_eq!(&id[..8], "0A000001", "ip");
        assert_eq!(&id[8..12], "2345", "low 16 bits of the pid");
        assert_eq!(&id[12..20], "0A0B0C0D", "loader hash");
        assert_eq!(&id[20..28], format!("{:08X}", 1500), "ms since start of month");
        assert_eq!(&id[28..], "0000", "counter");
        assert_eq!(&g.next_id_at(1_709_251_201_500)[28..], "0001");
        assert!(id.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
    }

    #[test]
    fn month_bounds_cover_leap_february_and_december() {
        // 2024-02-15 -> [2024-02-01, 2024-03-01)
        let (s, e) = month_bounds(1_707_955_200_000);
        assert_eq!((s, e), (1_706_745_600_000, 1_709_251_200_000));
        // 2023-12-31T23:59:59.999Z -> next is 2024-01-01
        let (_, e) = month_bounds(1_704_067_199_999);
        assert_eq!(e, 1_704_067_200_000);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn ids_are_unique_across_many_calls() {
        let ids: HashSet<String> = (0..50_000).map(|_| next_uniq_id("192.168.1.2")).collect();
        assert_eq!(ids.len(), 50_000);
    }
}
