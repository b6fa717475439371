//! The auth tables' file: read at start, replaced atomically and durably
//! after every change, readable by its owner only (it holds passwords).
//! Blocking: callers run these off their async workers.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::error::AuthError;
use crate::store::AuthStore;

/// What a file looked like when last read or written here.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

/// The auth file of one server: written after every change made here, and
/// read again when someone else changed it (an operator's edit, a restore),
/// so the tables follow the file without a restart. Reads and writes are
/// serialized, so a reload never interleaves with a save.
pub struct AuthFile {
    path: PathBuf,
    seen: Mutex<Stamp>,
}

impl AuthFile {
    pub fn new(path: PathBuf) -> Self {
        AuthFile { path, seen: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`open`] for this file.
    pub fn open(&self, firsts: &[crate::Credentials]) -> Result<(AuthStore, Vec<String>), AuthError> {
        let mut seen = self.seen.lock();
        let opened = open(&self.path, firsts)?;
        *seen = stamp(&self.path);
        Ok(opened)
    }

    /// Writes the tables as they are now.
    pub fn save(&self, users: &AuthStore) -> std::io::Result<()> {
        let mut seen = self.seen.lock();
        save(&self.path, users)?;
        *seen = stamp(&self.path);
        Ok(())
    }

    /// Loads the file when it changed since it was last read or written
    /// here; `Ok(true)` when the tables were replaced. A file that does not
    /// parse leaves the tables as they were (and is reported once per change).
    pub fn reload_if_changed(&self, users: &AuthStore) -> Result<bool, AuthError> {
        let mut seen = self.seen.lock();
        let now = stamp(&self.path);
        if now == *seen || now.is_none() {
            return Ok(false);
        }
        *seen = now;
        let bytes = fs::read(&self.path).map_err(|e| AuthError::BadTables(format!("{}: {e}", self.path.display())))?;
        users.load_json(&bytes)?;
        Ok(true)
    }
}

/// Loads `path` into `users`; a missing file leaves them empty.
pub fn load(path: &Path, users: &AuthStore) -> Result<(), AuthError> {
    match fs::read(path) {
        Ok(bytes) => users.load_json(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AuthError::BadTables(format!("{}: {e}", path.display()))),
    }
}

/// Loads `path`, creates `firsts` as Super users when it holds none (and
/// saves them), and returns the tables with the names created.
pub fn open(path: &Path, firsts: &[crate::Credentials]) -> Result<(AuthStore, Vec<String>), AuthError> {
    let users = AuthStore::new();
    load(path, &users)?;
    let created = users.init_super_users(firsts)?;
    if !created.is_empty() {
        save(path, &users).map_err(|e| AuthError::BadTables(format!("{}: {e}", path.display())))?;
    }
    Ok((users, created))
}

/// Writes `users` to `path`.
pub fn save(path: &Path, users: &AuthStore) -> std::io::Result<()> {
    write_atomic(path, &users.to_json())
}

/// Replaces `path` with `bytes`: a unique temporary file (mode 0600),
/// synced, renamed over the old one, the directory synced. A crash leaves
/// the old or the new file, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    drop(f);
    fs::rename(&tmp, path)?;
    fs::File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saved_tables_load_back_and_only_the_owner_reads_them() {
        let dir = std::env::temp_dir().join(format!("spate-auth-file-{}", std::process::id()));
        let path = dir.join("config").join("auth.json");
        let users = AuthStore::new();
        users.init_super_user("root", "rootsecret").unwrap();
        save(&path, &users).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = AuthStore::new();
        load(&path, &back).unwrap();
        assert_eq!(back.secret_of("root").as_deref(), Some("rootsecret"));
        load(&dir.join("missing.json"), &back).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_edited_file_is_read_again_and_a_broken_one_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("spate-auth-watch-{}", std::process::id()));
        let file = AuthFile::new(dir.join("auth.json"));
        let (users, created) = file.open(&[crate::Credentials::new("root", "rootsecret")]).unwrap();
        assert_eq!(created, ["root"]);
        assert!(!file.reload_if_changed(&users).unwrap(), "our own write is no change");
        let other = AuthStore::new();
        other.init_super_user("admin2", "admin2secret").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        save(file.path(), &other).unwrap();
        assert!(file.reload_if_changed(&users).unwrap());
        assert_eq!(users.secret_of("admin2").as_deref(), Some("admin2secret"));
        assert_eq!(users.secret_of("root"), None);
        fs::write(file.path(), b"{ broken").unwrap();
        assert!(file.reload_if_changed(&users).is_err());
        assert_eq!(users.secret_of("admin2").as_deref(), Some("admin2secret"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
