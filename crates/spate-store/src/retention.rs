//! Retention: when to delete the oldest commit-log segments. The decision is
//! a pure function of the clock, the settings and disk usage; the store
//! carries it out (see `MessageStore::run_retention`).

use std::path::Path;
use std::time::{Duration, SystemTime};

/// Why retention runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionTrigger {
    /// The periodic check: deletes only at a `deleteWhen` hour, or when the
    /// disk is too full.
    Scheduled,
    /// An operator asked (mqadmin's deleteExpiredCommitLog): any hour.
    Manual,
}

/// What retention may delete in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionMode {
    /// Segments older than `fileReservedTime`.
    Expired,
    /// The oldest segments whatever their age: the disk is past
    /// `diskMaxUsedSpaceRatio`.
    DiskFull,
}

/// Decides whether retention runs and how.
pub fn plan(
    trigger: RetentionTrigger,
    local_hour: u32,
    delete_when: &[u32],
    disk_used_percent: u32,
    disk_max_used_space_ratio: u32,
) -> Option<RetentionMode> {
    if disk_used_percent >= disk_max_used_space_ratio {
        Some(RetentionMode::DiskFull)
    } else if trigger == RetentionTrigger::Manual || delete_when.contains(&local_hour) {
        Some(RetentionMode::Expired)
    } else {
        None
    }
}

/// Whether one segment goes, given its last modification.
pub fn segment_expired(mode: RetentionMode, modified: Option<SystemTime>, now: SystemTime, reserved: Duration) -> bool {
    match mode {
        RetentionMode::DiskFull => true,
        RetentionMode::Expired => modified.is_some_and(|m| now.duration_since(m).unwrap_or_default() >= reserved),
    }
}

/// The local hour (0-23) of `t`.
pub fn local_hour(t: SystemTime) -> u32 {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as libc::time_t;
    // SAFETY: localtime_r writes only into the struct we pass.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return 0;
        }
        tm.tm_hour as u32
    }
}

/// Percentage of the file system holding `path` that is in use.
pub fn disk_used_percent(path: &Path) -> u32 {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return 0 };
    // SAFETY: statvfs fills the struct we pass from a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 || st.f_blocks == 0 {
            return 0;
        }
        let used = st.f_blocks.saturating_sub(st.f_bfree) as f64;
        let usable = (used + st.f_bavail as f64).max(1.0);
        ((used / usable) * 100.0) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_hour_and_disk() {
        use RetentionTrigger::*;
        assert_eq!(plan(Scheduled, 3, &[4], 10, 75), None);
        assert_eq!(plan(Scheduled, 4, &[4, 16], 10, 75), Some(RetentionMode::Expired));
        assert_eq!(plan(Manual, 3, &[4], 10, 75), Some(RetentionMode::Expired));
        assert_eq!(plan(Scheduled, 3, &[4], 80, 75), Some(RetentionMode::DiskFull));
    }

    #[test]
    fn expiry_by_age() {
        let now = SystemTime::now();
        let h = Duration::from_secs(3600);
        assert!(segment_expired(RetentionMode::Expired, Some(now - 3 * h), now, 2 * h));
        assert!(!segment_expired(RetentionMode::Expired, Some(now - h), now, 2 * h));
        assert!(!segment_expired(RetentionMode::Expired, None, now, 2 * h));
        assert!(segment_expired(RetentionMode::DiskFull, Some(now), now, 2 * h));
        assert!(local_hour(now) < 24);
        assert!(disk_used_percent(Path::new("/")) <= 100);
    }
}
