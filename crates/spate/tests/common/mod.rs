//! Runs real `spate` processes on loopback and free ports for end-to-end tests.
#![allow(dead_code)]

pub mod grpc;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spate_remoting::{ClientConfig, RemotingClient, RemotingCommand};

/// Lowest port [`free_port`] hands out.
const TEST_PORTS_FROM: u32 = 10_000;

/// A loopback port nobody listens on, for a server a test starts.
///
/// Taken from below the kernel's ephemeral range: a port from `bind(0)` is
/// an ephemeral one, and any outgoing connection (a broker registering
/// with its name server, a client) may take it as its local port before
/// the server binds it, so the server fails to start (seen in CI: a broker
/// whose HA port was taken so, gone a moment after its main port opened).
/// Ports go out in steps of 3 from a start that differs per process, so a
/// broker's derived ports (VIP `listenPort - 2`, HA `listenPort + 1`) do
/// not land on another server this process started.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|l| l.parse::<u32>().ok()))
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(TEST_PORTS_FROM + 3);
    if span < 3_000 {
        // No room below the ephemeral range here: fall back to it.
        return TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
    }
    let seed = std::process::id().wrapping_mul(7_919)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span / 3 {
        let port = TEST_PORTS_FROM + 2 + NEXT.fetch_add(3, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(port) else { continue };
        // The wildcard conflicts with a listener on any address of the port.
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {TEST_PORTS_FROM} and {ephemeral_low}");
}

/// A `spate standalone` child process, killed when dropped.
pub struct Standalone {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub namesrv_port: u16,
    pub broker_port: u16,
    log: PathBuf,
    extra_conf: Option<PathBuf>,
}

impl Standalone {
    pub fn start(data_dir: &Path) -> Standalone {
        Self::start_with(data_dir, &[])
    }

    /// Starts with extra broker.conf lines. Tests use 32 MiB commit-log
    /// segments unless they say otherwise: a dozen test brokers each warming
    /// a 1 GiB segment at once would measure the machine, not Spate.
    pub fn start_with(data_dir: &Path, conf: &[&str]) -> Standalone {
        let mut lines: Vec<&str> = conf.to_vec();
        if !lines.iter().any(|l| l.starts_with("mappedFileSizeCommitLog")) {
            lines.push("mappedFileSizeCommitLog=33554432");
        }
        // No dedicated gRPC port unless a test asks: test brokers would
        // race for the default 8081 (the broker port serves gRPC anyway).
        if !lines.iter().any(|l| l.starts_with("grpcServerPort")) {
            lines.push("grpcServerPort=0");
        }
        let extra_conf = {
            let p = data_dir.with_extension("conf");
            std::fs::write(&p, lines.join("\n")).expect("write conf");
            Some(p)
        };
        let mut s = Standalone {
            child: None,
            data_dir: data_dir.to_path_buf(),
            namesrv_port: free_port(),
            broker_port: free_port(),
            log: data_dir.with_extension("log"),
            extra_conf,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spate"));
        cmd.arg("standalone")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--namesrv-port")
            .arg(self.namesrv_port.to_string())
            .arg("--broker-port")
            .arg(self.broker_port.to_string())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(c) = &self.extra_conf {
            cmd.arg("-c").arg(c);
        }
        let readies_before = self.readies();
        self.child = Some(cmd.spawn().expect("spawn spate"));
        // Ready once this start has logged "ready", which comes after the
        // broker registered with the name server: open ports alone would
        // let a client ask for routes that are not there yet.
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.readies() == readies_before {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("spate exited early with {status}; log:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "spate never became ready; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
        for port in [self.namesrv_port, self.broker_port] {
            assert!(TcpStream::connect(("127.0.0.1", port)).is_ok(), "ready but port {port} closed");
        }
    }

    /// How many times the log says a start completed.
    fn readies(&self) -> usize {
        self.log_text().matches("spate standalone ready").count()
    }

    pub fn namesrv(&self) -> String {
        format!("127.0.0.1:{}", self.namesrv_port)
    }

    pub fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.broker_port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe_kill(c.id() as i32, 15);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts again on the same ports and data; a process still running
    /// is stopped cleanly first (otherwise the old one would keep the ports
    /// and go on answering in the new one's place).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            assert_eq!(self.terminate(), Some(0), "clean exit before the restart; log:\n{}", self.log_text());
        }
        self.spawn();
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- spate log ---\n{}", self.log_text());
        }
        self.kill9();
    }
}

/// A raw protocol client.
pub fn raw_client() -> RemotingClient {
    RemotingClient::new(ClientConfig::default(), None)
}

/// A SEND_MESSAGE (v1 header) of `body` to `topic`'s queue `queue_id`,
/// auto-creating the topic from TBW102, with KEYS `k`.
pub fn send_req(topic: &str, queue_id: i32, body: Vec<u8>) -> RemotingCommand {
    send_req_with(topic, queue_id, body, &[("KEYS", "k")])
}

/// [`send_req`] with the given message properties (WAIT=true added).
pub fn send_req_with(topic: &str, queue_id: i32, body: Vec<u8>, props: &[(&str, &str)]) -> RemotingCommand {
    let props = spate_common::message::encode_properties(props.iter().copied().chain([("WAIT", "true")]))
        .expect("valid properties");
    RemotingCommand::request(spate_remoting::request::SEND_MESSAGE)
        .with("producerGroup", "pg")
        .with("topic", topic)
        .with("defaultTopic", "TBW102")
        .with("defaultTopicQueueNums", 4)
        .with("queueId", queue_id)
        .with("sysFlag", 0)
        .with("bornTimestamp", 1)
        .with("flag", 0)
        .with("properties", props)
        .with("reconsumeTimes", 0)
        .with_body(bytes::Bytes::from(body))
}

/// A PULL_MESSAGE for group `cg` (suspended for `suspend_ms` when > 0).
pub fn pull_req(topic: &str, queue_id: i32, offset: i64, suspend_ms: i64, sub: &str) -> RemotingCommand {
    RemotingCommand::request(spate_remoting::request::PULL_MESSAGE)
        .with("consumerGroup", "cg")
        .with("topic", topic)
        .with("queueId", queue_id)
        .with("queueOffset", offset)
        .with("maxMsgNums", 32)
        .with("sysFlag", if suspend_ms > 0 { 2 | 4 } else { 4 })
        .with("commitOffset", 0)
        .with("suspendTimeoutMillis", suspend_ms)
        .with("subscription", sub)
        .with("subVersion", 0)
}

pub async fn call(client: &RemotingClient, addr: &str, req: RemotingCommand) -> RemotingCommand {
    client.invoke(addr, req, Duration::from_secs(10)).await.expect("call answered")
}

/// A `spate namesrv` or `spate broker` child process, killed when dropped.
pub struct Proc {
    child: Option<Child>,
    pub port: u16,
}

impl Proc {
    /// `spate namesrv --port <free>`.
    pub fn namesrv() -> Proc {
        Self::namesrv_with(&[])
    }

    /// A name server with these namesrv.conf lines (its conf and auth file
    /// under the system temp directory, named by its port).
    pub fn namesrv_with(conf: &[String]) -> Proc {
        let port = free_port();
        let base = std::env::temp_dir().join(format!("spate-test-ns-{}-{port}", std::process::id()));
        let conf_path = base.with_extension("conf");
        std::fs::write(&conf_path, conf.join("\n")).expect("write namesrv.conf");
        let child = Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["namesrv", "--port", &port.to_string()])
            .args(["-c", conf_path.to_str().expect("utf-8 path"), "--data-dir", base.to_str().expect("utf-8 path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn namesrv");
        let p = Proc { child: Some(child), port };
        p.wait_port();
        p
    }

    /// `spate broker -c <conf>` named `name`, registering with `namesrv`.
    pub fn broker(dir: &Path, name: &str, namesrv: &str) -> Proc {
        let port = free_port();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "brokerName={name}\nlistenPort={port}\nbrokerIP1=127.0.0.1\nnamesrvAddr={namesrv}\nstorePathRootDir={}\nmappedFileSizeCommitLog=33554432\ngrpcServerPort=0\n",
                dir.join(name).display()
            ),
        )
        .expect("write broker.conf");
        let child = Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["broker", "-c", conf.to_str().expect("utf-8 path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn broker");
        let p = Proc { child: Some(child), port };
        p.wait_port();
        p
    }

    fn wait_port(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "port {} never opened", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `spate broker -c <conf>` child whose broker.conf a test can rewrite
/// between restarts (role changes), logging to `<dir>/<label>.log`.
pub struct BrokerProc {
    child: Option<Child>,
    pub port: u16,
    pub ha_port: u16,
    pub conf: PathBuf,
    pub store_dir: PathBuf,
    pub log: PathBuf,
}

impl BrokerProc {
    /// Starts a broker labelled `label` (its directory and files) with the
    /// given broker.conf lines; listen and HA ports are chosen here.
    pub fn start(dir: &Path, label: &str, namesrv: &str, lines: &[String]) -> BrokerProc {
        let mut b = BrokerProc {
            child: None,
            port: free_port(),
            ha_port: free_port(),
            conf: dir.join(format!("{label}.conf")),
            store_dir: dir.join(label),
            log: dir.join(format!("{label}.log")),
        };
        b.write_conf(namesrv, lines);
        b.spawn();
        b
    }

    /// Rewrites broker.conf (ports and store stay); takes effect at the next start.
    pub fn write_conf(&self, namesrv: &str, lines: &[String]) {
        let mut text = format!(
            "listenPort={}\nhaListenPort={}\nbrokerIP1=127.0.0.1\nnamesrvAddr={namesrv}\nstorePathRootDir={}\nmappedFileSizeCommitLog=33554432\ngrpcServerPort=0\n",
            self.port,
            self.ha_port,
            self.store_dir.display()
        );
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&self.conf, text).expect("write broker.conf");
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["broker", "-c", self.conf.to_str().expect("utf-8 path")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "broker port {} never opened; log:\n{}", self.port, self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn ha_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ha_port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a hung peer, not a dead one.
    pub fn pause(&self, stop: bool) {
        if let Some(c) = &self.child {
            let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: signals our own child process.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
            // Delivery is asynchronous: wait until the state says so.
            let stat = format!("/proc/{}/stat", c.id());
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let state = std::fs::read_to_string(&stat)
                    .ok()
                    .and_then(|t| t.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()));
                if (state == Some('T')) == stop || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// The commit-log segment files, by name.
    pub fn commit_log_files(&self) -> Vec<(String, Vec<u8>)> {
        let dir = self.store_dir.join("commitlog");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        names.sort();
        names.into_iter().map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap_or_default())).collect()
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether two commit logs hold the same bytes: a segment both have is
/// equal on both, and a segment only one has is all zeros (one prepared
/// ahead of need).
pub fn same_commit_log(a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)]) -> Result<(), String> {
    let zero = |v: &[u8]| v.iter().all(|x| *x == 0);
    for (name, bytes) in a {
        match b.iter().find(|(n, _)| n == name) {
            Some((_, other)) if other == bytes => {}
            Some((_, other)) => {
                let at =
                    bytes.iter().zip(other.iter()).position(|(x, y)| x != y).unwrap_or(bytes.len().min(other.len()));
                return Err(format!("segment {name} differs at byte {at}"));
            }
            None if zero(bytes) => {}
            None => return Err(format!("segment {name} is missing on one side")),
        }
    }
    for (name, bytes) in b {
        if !a.iter().any(|(n, _)| n == name) && !zero(bytes) {
            return Err(format!("segment {name} is missing on one side"));
        }
    }
    Ok(())
}

/// A real ZooKeeper server (Debian's `zookeeper` package, which
/// `scripts/test.sh` installs) on a free loopback port, killed when dropped.
/// `tickTime` is 200 ms, so sessions may time out in as little as 400 ms.
pub struct ZooKeeper {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// Where Debian's package puts the server.
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

impl ZooKeeper {
    pub fn start() -> ZooKeeper {
        ZooKeeper::start_on(free_port())
    }

    /// On a given port (one a test already handed to a process that should
    /// find ZooKeeper there later).
    pub fn start_on(port: u16) -> ZooKeeper {
        assert!(
            Path::new(ZOOKEEPER_JAR).exists(),
            "ZooKeeper is not installed ({ZOOKEEPER_JAR} missing): run scripts/test.sh, which installs it"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Command::new("java")
            .args([
                "-Dzookeeper.admin.enableServer=false",
                "-Dzookeeper.4lw.commands.whitelist=srvr",
                "-cp",
                ZOOKEEPER_JAR,
                "org.apache.zookeeper.server.ZooKeeperServerMain",
                &port.to_string(),
                dir.path().to_str().expect("utf-8 path"),
                "200",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn java (ZooKeeper)");
        let zk = ZooKeeper { child: Some(child), port, _dir: dir };
        // Ready when it serves requests: `srvr` then reports its mode.
        // (`ruok` answers "imok" earlier, while the server still refuses
        // sessions -- "not currently serving requests" -- and a process
        // that connected then could fail its first session.)
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                // A server still starting may accept and not answer yet.
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut out = String::new();
                if s.write_all(b"srvr").is_ok() && s.read_to_string(&mut out).is_ok() && out.contains("Mode:") {
                    return zk;
                }
            }
            assert!(Instant::now() < deadline, "ZooKeeper on port {port} never began serving");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// POP_MESSAGE for `group` on `topic` (queue -1: any), `max` messages
/// invisible for `invisible_ms`, waiting up to `poll_ms`; a new group
/// starts at each queue's first message.
pub fn pop_req(group: &str, topic: &str, queue_id: i32, max: i32, invisible_ms: i64, poll_ms: i64) -> RemotingCommand {
    RemotingCommand::request(spate_remoting::request::POP_MESSAGE)
        .with("consumerGroup", group)
        .with("topic", topic)
        .with("queueId", queue_id)
        .with("maxMsgNums", max)
        .with("invisibleTime", invisible_ms)
        .with("pollTime", poll_ms)
        .with("bornTime", 0)
        .with("initMode", 0)
        .with("expType", "TAG")
        .with("exp", "*")
}
