//! What the interop tests share: a real `spate standalone` child process on
//! free loopback ports, `spate admin` run against it, and the
//! rocketmq-client-rust runtime they drive the client on.
//!
//! Each test crate uses part of it.
#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};

pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Owns the spate child process and its data directory. Dropping it (normal
/// end or panic unwind) kills and reaps the child; on panic it also prints
/// the tail of the server's log.
pub struct SpateServer {
    child: Child,
    pub namesrv_port: u16,
    pub broker_port: u16,
    log_path: PathBuf,
    // Declared last: removed after the child is gone.
    _data_dir: tempfile::TempDir,
}

impl SpateServer {
    /// Starts `spate standalone` with `broker_conf` as its broker.conf (the
    /// broker is told to advertise 127.0.0.1, so every client connection
    /// stays on loopback) and waits until both ports accept connections.
    pub fn start(broker_conf: &str) -> SpateServer {
        let bin = spate_bin();
        assert!(
            bin.is_file(),
            "spate binary not found at {} (build it with `cargo build -p spate` in the main \
             workspace, or set SPATE_BIN)",
            bin.display()
        );
        let data_dir = tempfile::Builder::new().prefix("spate-interop-").tempdir().expect("create temp dir");
        let store_dir = data_dir.path().join("data");
        std::fs::create_dir_all(&store_dir).expect("create data dir");
        let log_path = data_dir.path().join("spate.log");
        let log = std::fs::File::create(&log_path).expect("create spate log");
        let (namesrv_port, broker_port) = two_free_ports();
        let conf = data_dir.path().join("broker.conf");
        std::fs::write(&conf, format!("brokerIP1=127.0.0.1\n{broker_conf}")).expect("write broker.conf");

        let child = Command::new(&bin)
            .arg("standalone")
            .arg("-c")
            .arg(&conf)
            .arg("--data-dir")
            .arg(&store_dir)
            .arg("--namesrv-port")
            .arg(namesrv_port.to_string())
            .arg("--broker-port")
            .arg(broker_port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut server = SpateServer { child, namesrv_port, broker_port, log_path, _data_dir: data_dir };
        println!(
            "spate started: pid {}, name server 127.0.0.1:{namesrv_port}, broker 127.0.0.1:{broker_port}",
            server.child.id()
        );
        server.wait_until_listening();
        server
    }

    pub fn namesrv_addr(&self) -> String {
        format!("127.0.0.1:{}", self.namesrv_port)
    }

    /// Bounded wait until both ports accept TCP connections; fails early if
    /// the child exits.
    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        for (what, port) in [("name server", self.namesrv_port), ("broker", self.broker_port)] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait on spate") {
                    panic!(
                        "spate exited during start-up ({status}) before its {what} port {port} accepted connections"
                    );
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "spate's {what} port {port} did not accept TCP connections within {:?}",
                        SERVER_START_TIMEOUT
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn log_tail(&self, max_bytes: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            let start = bytes.len().saturating_sub(max_bytes);
            text = String::from_utf8_lossy(&bytes[start..]).into_owned();
        }
        text
    }
}

impl Drop for SpateServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- last 8 KiB of spate's output ({}) ----\n{}\n---- end of spate output ----",
                self.log_path.display(),
                self.log_tail(8 * 1024)
            );
        }
    }
}

pub fn spate_bin() -> PathBuf {
    match std::env::var_os("SPATE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/spate"),
    }
}

/// Two distinct free loopback ports: bind both at once, then release them.
fn two_free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind free port");
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// Runs `spate admin -n <namesrv> ARGS` signed as `access_key`/`secret_key`
/// (passed through the environment, not the command line); returns its
/// stdout, or its stderr as the error.
pub fn admin(namesrv: &str, access_key: &str, secret_key: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(spate_bin())
        .arg("admin")
        .arg("-n")
        .arg(namesrv)
        .args(args)
        .env("SPATE_ACCESS_KEY", access_key)
        .env("SPATE_SECRET_KEY", secret_key)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run spate admin: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("spate admin {} ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The client's runtime. The push consumer runs listener calls on the
/// runtime's metadata-io blocking lane, which on 2 cores admits 4 running and
/// 16 queued tasks; one pull burst (4 queues x 32 messages) overflows it and
/// the client sends the overflow back to the retry topic. Widen it.
pub fn client_runtime_owner() -> RuntimeOwner {
    let mut config =
        RuntimeConfig::for_parallelism("spate-interop", 2).with_max_blocking_threads(96).expect("valid blocking limit");
    config.blocking_lane_policies.metadata_io.max_concurrency = 64;
    config.blocking_lane_policies.metadata_io.max_queue_depth = 4096;
    RuntimeOwner::plan(config).expect("valid runtime config").build().expect("build client runtime")
}

/// Runs a client call that has no deadline of its own, failing clearly if
/// it does not finish in time.
pub async fn bounded<T>(what: &str, limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}
