//! A hostile client against a real `spate standalone` process.
//!
//! Batches of requests drawn from proptest strategies (`hostile/requests.rs`:
//! malformed frames, headers, properties, bodies, forged offsets, path-like
//! and system topic names) go to the broker and name server; after each
//! batch, and after each restart (clean SIGTERM and kill -9 in turn), these
//! invariants are checked:
//!
//! 1. the process is alive and a fresh client's send + pull round trip on a
//!    fresh topic succeeds; a delayed (level 1) and a timer (1 s) probe sent
//!    at the previous check have reached their topic;
//! 2. every message acknowledged so far reads back (VIEW_MESSAGE_BY_ID at its
//!    commit-log offset) with the same bytes as right after its
//!    acknowledgement, and probe messages also by pull at their queue offset;
//! 3. no file outside the data dir changed: canary trees beside the data dir
//!    and under /tmp keep their files, and nothing new appears beside it;
//! 4. the broker's anonymous memory (RssAnon) stays under a bound.
//!
//! Seeded: batch `b` is drawn from a ChaCha RNG seeded with (seed, b), so a
//! run replays with the same `SPATE_HOSTILE_SEED` (the broker's answers are
//! deterministic up to timing). Settings (environment):
//! - `SPATE_HOSTILE_SEED` (default 1): the seed, printed at the start.
//! - `SPATE_HOSTILE_SECS` (default 60): time budget for batches; a soak sets
//!   3600 (`scripts/soak-hostile.sh`).
//! - `SPATE_HOSTILE_BATCHES`: stop after this many batches (replay up to a failure).
//! - `SPATE_HOSTILE_BATCH_LEN` (default 40): requests per batch.
//! - `SPATE_HOSTILE_RESTART_EVERY` (default 3): batches between restarts.
//! - `SPATE_HOSTILE_KEEP_GOING=1`: report every violation and go on; fail at the end.
//! - `SPATE_HOSTILE_ANON_MIB` (default 256): the RssAnon bound.
//! - `SPATE_HOSTILE_SKIP=unterminated-properties`: exploration only, to see
//!   past the known recovery bug while its fix lands (CI never sets it).

mod common;
#[path = "hostile/requests.rs"]
mod requests;

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{pull_req, raw_client, send_req_with, Standalone};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use requests::{Action, Targets};
use spate_common::message::{decode_record, parse_offset_msg_id};
use spate_remoting::{request, response, RemotingClient, RemotingCommand, SerializeType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one request may take before it counts as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a delayed or timer probe may take to reach its topic.
const PROBE_DUE: Duration = Duration::from_secs(20);
/// Requests remembered for a failure report.
const RING: usize = 48;
/// Acknowledged messages re-read per ordinary check besides the new ones
/// (all of them after a restart).
const SAMPLE: usize = 400;

struct Settings {
    seed: u64,
    secs: u64,
    batches: u64,
    batch_len: usize,
    restart_every: u64,
    keep_going: bool,
    anon_max_kib: u64,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        Settings {
            seed: var("SPATE_HOSTILE_SEED", 1),
            secs: var("SPATE_HOSTILE_SECS", 60),
            batches: var("SPATE_HOSTILE_BATCHES", u64::MAX),
            batch_len: var("SPATE_HOSTILE_BATCH_LEN", 40) as usize,
            restart_every: var("SPATE_HOSTILE_RESTART_EVERY", 3).max(1),
            keep_going: std::env::var("SPATE_HOSTILE_KEEP_GOING").is_ok_and(|v| v == "1"),
            // The broker's heap serves a handful of connections here; its
            // stored data is file-backed (RssFile), not anonymous. A peer
            // that does not read pins at most writeBufferHighWaterMark
            // (4 MiB) and a frame (16 MiB): the floods held at a check stay
            // far below 256 MiB. One unread flood used to pin ~257 MB.
            anon_max_kib: var("SPATE_HOSTILE_ANON_MIB", 256) * 1024,
        }
    }
}

/// A message the broker acknowledged, as it read back right afterwards.
struct Acked {
    /// Commit-log offset (from the offset message id).
    phys: u64,
    /// Stored topic, queue and queue offset at acknowledgement.
    topic: String,
    queue_id: i32,
    queue_offset: i64,
    body_len: usize,
    /// Hash of the whole stored record at acknowledgement.
    raw_hash: u64,
    /// The PGROUP and REAL_TOPIC properties it was stored with.
    pgroup: Option<String>,
    real_topic: Option<String>,
    /// A probe: its topic is never named by hostile requests, so it can be pulled too.
    probe_body: Option<Vec<u8>>,
    /// The request that stored it.
    request: String,
    /// Its topic was deleted by a request the broker answered SUCCESS:
    /// deleted data is not lost data, so it is no longer checked (a
    /// lookup by offset needs the record's consume-queue unit).
    deleted: bool,
}

struct Violation {
    invariant: &'static str,
    detail: String,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// A file tree's contents: relative path -> content hash (None: a directory).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<u64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            if p.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(hash(&std::fs::read(&p).unwrap_or_default())));
            }
        }
    }
    out
}

/// Canary trees outside the data dir, with what they held at the start.
struct Canaries {
    /// The data dir's parent: holds only the data dir, its conf and log, and `canary`.
    parent: PathBuf,
    roots: Vec<(PathBuf, BTreeMap<PathBuf, Option<u64>>)>,
}

impl Canaries {
    fn plant(parent: &Path, tmp_root: &Path) -> Canaries {
        let mut roots = Vec::new();
        for root in [parent.join("canary"), tmp_root.to_path_buf()] {
            let _ = std::fs::remove_dir_all(&root);
            for sub in ["", "victim", "victim/deeper", "x"] {
                std::fs::create_dir_all(root.join(sub)).expect("canary dir");
                std::fs::write(root.join(sub).join("keep.txt"), format!("canary {sub}")).expect("canary file");
            }
            roots.push((root.clone(), snapshot(&root)));
        }
        Canaries { parent: parent.to_path_buf(), roots }
    }

    fn check(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (root, before) in &self.roots {
            let now = snapshot(root);
            for (p, h) in before {
                match now.get(p) {
                    None => out.push(format!("{} was removed", root.join(p).display())),
                    Some(n) if n != h => out.push(format!("{} changed", root.join(p).display())),
                    _ => {}
                }
            }
            for p in now.keys().filter(|p| !before.contains_key(*p)) {
                out.push(format!("{} appeared", root.join(p).display()));
            }
        }
        let allowed = ["data", "data.conf", "data.log", "canary"];
        if let Ok(rd) = std::fs::read_dir(&self.parent) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !allowed.contains(&name.as_str()) {
                    out.push(format!("{} appeared beside the data dir", e.path().display()));
                }
            }
        }
        out
    }
}

/// A field of /proc/<pid>/status in KiB.
fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is running (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    matches!(state, Some(s) if s != 'Z' && s != 'X')
}

fn describe(cmd: &RemotingCommand) -> String {
    let mut fields: Vec<_> = cmd.ext_fields.iter().collect();
    fields.sort();
    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", clip(v, 120))).collect();
    let ser = if cmd.serialize_type == SerializeType::RocketMq { " (binary header)" } else { "" };
    format!(
        "{} (code {}){ser} {{{}}} body {} bytes {}",
        requests::code_name(cmd.code),
        cmd.code,
        fields.join(", "),
        cmd.body.len(),
        clip(&String::from_utf8_lossy(&cmd.body[..cmd.body.len().min(64)]), 64)
    )
}

/// `{:?}` of a string, shortened.
fn clip(s: &str, max: usize) -> String {
    let d = format!("{s:?}");
    if d.len() <= max {
        d
    } else {
        let cut = (0..=max).rev().find(|i| d.is_char_boundary(*i)).unwrap_or(0);
        format!("{}...({} chars)", &d[..cut], s.chars().count())
    }
}

struct Hostile {
    settings: Settings,
    spate: Standalone,
    client: RemotingClient,
    targets: Targets,
    canaries: Canaries,
    acked: Vec<Acked>,
    /// Acks not yet re-read by a check.
    unchecked_from: usize,
    ring: VecDeque<String>,
    /// Delay and timer probes not yet seen in their topics: (topic, body, sent at, request).
    probes_due: Vec<(String, Vec<u8>, Instant, String)>,
    probe_seq: u64,
    /// Connections of pull floods, held until the batch's check.
    floods: Vec<tokio::net::TcpStream>,
    tried: BTreeMap<String, u64>,
    answers: BTreeMap<String, u64>,
    checks_held: u64,
    restarts: u64,
    /// Highest RssAnon seen at a check.
    anon_peak_kib: u64,
    failures: Vec<String>,
    batch: u64,
}

impl Hostile {
    fn remember(&mut self, line: String) {
        if self.ring.len() == RING {
            self.ring.pop_front();
        }
        self.ring.push_back(line);
    }

    async fn invoke(&self, addr: &str, cmd: RemotingCommand) -> Result<RemotingCommand, String> {
        match tokio::time::timeout(CALL_TIMEOUT, self.client.invoke(addr, cmd, CALL_TIMEOUT)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("error: {e}")),
            Err(_) => Err("no answer in time".into()),
        }
    }

    async fn run(&mut self, step: usize, action: Action) {
        *self.tried.entry(action.kind()).or_default() += 1;
        let label = format!("b{}.{step}", self.batch);
        match action {
            Action::Call { code, fields, body, binary_header, to_namesrv } => {
                let mut cmd = RemotingCommand::request(code).with_body(body);
                for (k, v) in fields {
                    cmd = cmd.with(&k, v);
                }
                if binary_header {
                    cmd.serialize_type = SerializeType::RocketMq;
                }
                let addr = if to_namesrv { self.spate.namesrv() } else { self.spate.broker() };
                self.call_and_record(label, cmd, &addr).await;
            }
            Action::AtAcked { code, target, half_only, own_group, offset_delta, fields } => {
                let pool: Vec<&Acked> = self
                    .acked
                    .iter()
                    // Probes stay out of reach: their checks assume nobody else touched them.
                    .filter(|a| a.probe_body.is_none() && (!half_only || a.topic == requests::HALF_TOPIC))
                    .rev()
                    .take(64)
                    .collect();
                let picked = (!pool.is_empty()).then(|| pool[target.index(pool.len())]);
                let (phys, qo) = picked.map_or((0, 0), |a| (a.phys as i64, a.queue_offset));
                let group = picked.and_then(|a| a.pgroup.clone()).filter(|_| own_group);
                let topic = picked.map(|a| a.real_topic.clone().unwrap_or_else(|| a.topic.clone())).unwrap_or_default();
                let phys = phys.wrapping_add(offset_delta);
                let mut cmd = RemotingCommand::request(code);
                for (k, v) in fields {
                    cmd = cmd.with(&k, v);
                }
                cmd = match code {
                    request::END_TRANSACTION => {
                        let cmd = cmd.with("commitLogOffset", phys).with("tranStateTableOffset", qo);
                        match group {
                            Some(g) => cmd.with("producerGroup", g),
                            None => cmd,
                        }
                    }
                    request::DELETE_TOPIC_IN_BROKER => cmd.with("topic", topic),
                    _ => cmd.with("offset", phys),
                };
                let broker = self.spate.broker();
                self.call_and_record(label, cmd, &broker).await;
            }
            Action::Raw { bytes } => {
                let outcome = self.raw(&bytes).await;
                *self.answers.entry(format!("raw:{outcome}")).or_default() += 1;
                self.remember(format!(
                    "{label} raw frame {} bytes {:02x?}... -> {outcome}",
                    bytes.len(),
                    &bytes[..bytes.len().min(48)]
                ));
            }
            Action::PullFlood { pulls } => {
                let outcome = self.flood(pulls).await;
                *self.answers.entry(format!("flood:{outcome}")).or_default() += 1;
                self.remember(format!(
                    "{label} pull flood: {pulls} pulls of {} never read -> {outcome}",
                    requests::FAT_TOPIC
                ));
            }
        }
    }

    async fn call_and_record(&mut self, label: String, cmd: RemotingCommand, addr: &str) {
        let text = format!("{label} {}", describe(&cmd));
        let send_code =
            matches!(cmd.code, request::SEND_MESSAGE | request::SEND_MESSAGE_V2 | request::SEND_BATCH_MESSAGE);
        let single_body = (cmd.code != request::SEND_BATCH_MESSAGE).then(|| cmd.body.to_vec());
        let deleting = (cmd.code == request::DELETE_TOPIC_IN_BROKER).then(|| cmd.field("topic").map(str::to_string));
        let outcome = self.invoke(addr, cmd).await;
        if let (Some(Some(topic)), Ok(r)) = (&deleting, &outcome) {
            if r.code == response::SUCCESS {
                self.acked.iter_mut().filter(|a| a.topic == *topic).for_each(|a| a.deleted = true);
            }
        }
        match &outcome {
            Ok(r) => {
                *self.answers.entry(format!("code {}", r.code)).or_default() += 1;
                self.remember(format!("{text} -> {} {}", r.code, clip(r.remark.as_deref().unwrap_or(""), 160)));
            }
            Err(e) => {
                *self.answers.entry("unanswered".into()).or_default() += 1;
                self.remember(format!("{text} -> {e}"));
            }
        }
        if let (true, Ok(r)) = (send_code, &outcome) {
            if r.code == response::SUCCESS {
                self.record_ack(r, &text, single_body).await;
            }
        }
    }

    /// Reads an acknowledged send back at once and remembers what it held.
    async fn record_ack(&mut self, r: &RemotingCommand, request: &str, sent_body: Option<Vec<u8>>) {
        let ids: Vec<&str> = r.field("msgId").unwrap_or_default().split(',').collect();
        let mut bad = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let Some((_, phys)) = parse_offset_msg_id(id) else {
                bad.push(format!("acknowledged with msgId {id:?}, which is not an offset message id"));
                continue;
            };
            let raw = match self.view(phys).await {
                Ok(raw) => raw,
                Err(e) => {
                    bad.push(format!("cannot be read back at offset {phys}: {e}"));
                    continue;
                }
            };
            // Remembered even when it does not decode: a check after the
            // next restart shows what such a record does to the log.
            let mut a = Acked {
                phys,
                topic: String::new(),
                queue_id: -1,
                queue_offset: -1,
                body_len: 0,
                raw_hash: hash(&raw),
                pgroup: None,
                real_topic: None,
                probe_body: None,
                request: format!("{request} [message {i}]"),
                deleted: false,
            };
            match decode_record(&raw, true) {
                Ok(rec) => {
                    if let Some(b) = sent_body.as_ref().filter(|b| **b != rec.body) {
                        bad.push(format!(
                            "stored body ({} bytes) differs from the sent one ({} bytes)",
                            rec.body.len(),
                            b.len()
                        ));
                    }
                    (a.topic, a.queue_id, a.queue_offset, a.body_len) =
                        (rec.topic.to_string(), rec.queue_id, rec.queue_offset, rec.body.len());
                    a.pgroup = rec.property("PGROUP").map(str::to_string);
                    a.real_topic = rec.property("REAL_TOPIC").map(str::to_string);
                }
                Err(e) => bad.push(format!("the record stored at offset {phys} does not decode: {e}")),
            }
            self.acked.push(a);
        }
        for b in bad {
            self.violate(vec![Violation {
                invariant: "2 acknowledged messages are intact",
                detail: format!("just acknowledged by {request}: {b}"),
            }]);
        }
    }

    async fn view(&self, phys: u64) -> Result<Vec<u8>, String> {
        let cmd = RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with("offset", phys);
        match self.invoke(&self.spate.broker(), cmd).await? {
            r if r.code == response::SUCCESS => Ok(r.body.to_vec()),
            r => Err(format!("VIEW_MESSAGE_BY_ID answered {} {:?}", r.code, r.remark.unwrap_or_default())),
        }
    }

    async fn raw(&self, bytes: &[u8]) -> &'static str {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(CALL_TIMEOUT, tokio::net::TcpStream::connect(self.spate.broker())).await
        else {
            return "connect failed";
        };
        if !matches!(tokio::time::timeout(Duration::from_secs(2), s.write_all(bytes)).await, Ok(Ok(()))) {
            return "write failed";
        }
        let _ = s.shutdown().await;
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return if got == 0 { "closed" } else { "answered, closed" },
                Ok(Ok(n)) => got += n,
                Err(_) => return if got == 0 { "silent" } else { "answered, open" },
            }
        }
    }

    async fn flood(&mut self, pulls: usize) -> &'static str {
        let Ok(mut s) = tokio::net::TcpStream::connect(self.spate.broker()).await else { return "connect failed" };
        let mut frames = Vec::new();
        for i in 0..pulls {
            let mut p = pull_req(requests::FAT_TOPIC, 0, 0, 0, "*").with("maxMsgNums", 32);
            p.opaque = i as i32 + 1;
            frames.extend_from_slice(&p.to_bytes());
        }
        let wrote = matches!(tokio::time::timeout(Duration::from_secs(2), s.write_all(&frames)).await, Ok(Ok(())));
        self.floods.push(s);
        // Let the broker build its answers before anything is measured.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if wrote {
            "written, held unread"
        } else {
            "write blocked, held unread"
        }
    }

    fn violate(&mut self, v: Vec<Violation>) {
        if v.is_empty() {
            return;
        }
        let s = &self.settings;
        let mut report = format!(
            "hostile-client invariant violated: seed {} batch {} (replay: SPATE_HOSTILE_SEED={} SPATE_HOSTILE_BATCHES={} cargo test -p spate --test hostile -- --nocapture)\n",
            s.seed,
            self.batch,
            s.seed,
            self.batch + 1
        );
        for x in &v {
            report.push_str(&format!("  invariant {}: {}\n", x.invariant, x.detail));
        }
        report.push_str("  the requests before it, oldest first:\n");
        for line in &self.ring {
            report.push_str(&format!("    {line}\n"));
        }
        if !s.keep_going {
            panic!("{report}");
        }
        eprintln!("{report}");
        self.failures.push(report);
    }

    /// Checks every invariant; `all` re-reads every acknowledged message.
    async fn check(&mut self, phase: &str, all: bool) {
        let mut v = Vec::new();
        let pid = self.spate.pid().unwrap_or(0);
        if !alive(pid) {
            v.push(Violation { invariant: "5 the process is alive", detail: format!("{phase}: pid {pid} is gone") });
            self.floods.clear();
            self.violate(v);
            // Only with SPATE_HOSTILE_KEEP_GOING: start it again and go on.
            self.spate.kill9();
            self.spate.restart();
            return;
        }
        if let Some(anon) = proc_status_kib(pid, "RssAnon:") {
            self.anon_peak_kib = self.anon_peak_kib.max(anon);
            if anon > self.settings.anon_max_kib {
                let rss = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
                v.push(Violation {
                    invariant: "4 memory is bounded",
                    detail: format!(
                        "{phase}: RssAnon {} MiB > {} MiB (VmRSS {} MiB; {} unread pull-flood connections open)",
                        anon / 1024,
                        self.settings.anon_max_kib / 1024,
                        rss / 1024,
                        self.floods.len()
                    ),
                });
            }
        }
        self.floods.clear();
        for d in self.canaries.check() {
            v.push(Violation { invariant: "3 no file outside the data dir changed", detail: format!("{phase}: {d}") });
        }
        v.extend(self.fresh_client(phase).await);
        v.extend(self.probes_arrived(phase).await);
        v.extend(self.acked_intact(phase, all).await);
        if v.is_empty() {
            self.checks_held += 1;
        } else if self.settings.keep_going {
            // Report once: take what was found as the new baseline.
            self.canaries = Canaries::plant(&self.canaries.parent.clone(), &self.canaries.roots[1].0.clone());
        }
        self.violate(v);
    }

    /// A new client's send and pull on a fresh topic; plants the next delay and timer probes.
    async fn fresh_client(&mut self, phase: &str) -> Vec<Violation> {
        let mut v = Vec::new();
        self.probe_seq += 1;
        let n = self.probe_seq;
        let fresh = raw_client();
        let broker = self.spate.broker();
        let topic = format!("hostile_probe_{n}");
        let body = format!("probe {n}").into_bytes();
        let bad = |detail: String| Violation {
            invariant: "1 a fresh client is served",
            detail: format!("{phase}: {detail}"),
        };
        // A busy broker may shed load for a moment (clients retry that); for 10 s it is not serving.
        let busy_until = Instant::now() + Duration::from_secs(10);
        let r = loop {
            let sent = tokio::time::timeout(
                CALL_TIMEOUT,
                fresh.invoke(&broker, send_req_with(&topic, 0, body.clone(), &[]), CALL_TIMEOUT),
            )
            .await;
            match sent {
                Ok(Ok(r)) if r.code == response::SUCCESS => break r,
                Ok(Ok(r)) if [response::SYSTEM_BUSY, response::FLOW_CONTROL].contains(&r.code) && Instant::now() < busy_until => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Ok(Ok(r)) if r.code == response::TOPIC_NOT_EXIST => {
                    return vec![bad(format!(
                        "send to the new topic {topic} answered TOPIC_NOT_EXIST {:?}: topics are no longer auto-created (did a request above delete or change TBW102?)",
                        r.remark
                    ))]
                }
                Ok(Ok(r)) => return vec![bad(format!("send to {topic} answered {} {:?}", r.code, r.remark))],
                Ok(Err(e)) => return vec![bad(format!("send to {topic} failed: {e}"))],
                Err(_) => return vec![bad(format!("send to {topic} not answered in {CALL_TIMEOUT:?}"))],
            }
        };
        let qo: i64 = r.field("queueOffset").and_then(|q| q.parse().ok()).unwrap_or(-1);
        match self.pull_body(&fresh, &topic, qo).await {
            Ok(got) if got == body => {}
            Ok(got) => v.push(bad(format!("pulled {} bytes from {topic}, sent {}", got.len(), body.len()))),
            Err(e) => v.push(bad(format!("pull of {topic} offset {qo}: {e}"))),
        }
        let request = format!("probe send to {topic}");
        self.record_ack(&r, &request, Some(body.clone())).await;
        if let Some(a) = self.acked.last_mut().filter(|a| a.topic == topic) {
            a.probe_body = Some(body);
        }
        for (kind, props) in [("delay", ("DELAY", "1")), ("timer", ("TIMER_DELAY_SEC", "1"))] {
            let topic = format!("hostile_{kind}_{n}");
            let body = format!("{kind} probe {n}").into_bytes();
            match self.invoke(&broker, send_req_with(&topic, 0, body.clone(), &[props])).await {
                Ok(r) if r.code == response::SUCCESS => self.probes_due.push((
                    topic.clone(),
                    body,
                    Instant::now(),
                    format!("{kind} probe to {topic} ({props:?})"),
                )),
                Ok(r) => v.push(bad(format!("{kind} probe to {topic} answered {} {:?}", r.code, r.remark))),
                Err(e) => v.push(bad(format!("{kind} probe to {topic}: {e}"))),
            }
        }
        v
    }

    async fn pull_body(&self, client: &RemotingClient, topic: &str, offset: i64) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = tokio::time::timeout(
                CALL_TIMEOUT,
                client.invoke(
                    &self.spate.broker(),
                    pull_req(topic, 0, offset, 0, "*").with("maxMsgNums", 1),
                    CALL_TIMEOUT,
                ),
            )
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| e.to_string())?;
            if r.code == response::SUCCESS {
                return decode_record(&r.body, true)
                    .map(|rec| rec.body.to_vec())
                    .map_err(|e| format!("undecodable: {e}"));
            }
            if Instant::now() > deadline {
                return Err(format!("pull answered {} {:?}", r.code, r.remark));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Delay and timer probes planted at the previous check are in their topics
    /// (waiting up to [`PROBE_DUE`] after they were sent).
    async fn probes_arrived(&mut self, phase: &str) -> Vec<Violation> {
        let mut v = Vec::new();
        let due = std::mem::take(&mut self.probes_due);
        let (mine, pending): (Vec<_>, Vec<_>) =
            due.into_iter().partition(|p| !p.0.ends_with(&format!("_{}", self.probe_seq + 1)));
        self.probes_due = pending;
        let client = raw_client();
        for (topic, body, sent, what) in mine {
            let result = loop {
                match self.pull_body(&client, &topic, 0).await {
                    Ok(b) => break Ok(b),
                    Err(e) if sent.elapsed() > PROBE_DUE => break Err(e),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            match result {
                Ok(b) if b == body => {}
                Ok(b) => v.push(Violation {
                    invariant: "1 delayed delivery works",
                    detail: format!("{phase}: {what} arrived with {} bytes, sent {}", b.len(), body.len()),
                }),
                Err(e) => v.push(Violation {
                    invariant: "1 delayed delivery works",
                    detail: format!("{phase}: {what} not in its topic {:?} after sending: {e}", sent.elapsed()),
                }),
            }
        }
        v
    }

    /// Every acknowledged message reads back as it was (a sample unless `all`).
    async fn acked_intact(&mut self, phase: &str, all: bool) -> Vec<Violation> {
        let n = self.acked.len();
        let mut which: Vec<usize> = if all || n <= SAMPLE * 4 {
            (0..n).collect()
        } else {
            let stride = (self.unchecked_from / SAMPLE).max(1);
            let start = (self.batch as usize) % stride;
            (start..self.unchecked_from).step_by(stride).chain(self.unchecked_from..n).collect()
        };
        which.dedup();
        which.retain(|i| !self.acked[*i].deleted);
        self.unchecked_from = n;
        let client = raw_client();
        let mut lost = Vec::new();
        for i in which {
            let a = &self.acked[i];
            let why = match self.view(a.phys).await {
                Err(e) => Some(e),
                Ok(raw) if hash(&raw) == a.raw_hash => None,
                Ok(raw) => Some(match decode_record(&raw, false) {
                    Ok(rec) => format!(
                        "the record differs: now topic {:?} queue {} offset {} body {} bytes, acknowledged as topic {:?} queue {} offset {} body {} bytes",
                        rec.topic, rec.queue_id, rec.queue_offset, rec.body.len(), a.topic, a.queue_id, a.queue_offset, a.body_len
                    ),
                    Err(e) => format!("the record no longer decodes: {e}"),
                }),
            };
            let why = match (why, &a.probe_body) {
                (None, Some(body)) => match self.pull_body(&client, &a.topic, a.queue_offset).await {
                    Ok(b) if b == *body => None,
                    Ok(b) => Some(format!(
                        "pull at queue offset {} returned {} bytes, not the probe's {}",
                        a.queue_offset,
                        b.len(),
                        body.len()
                    )),
                    Err(e) => Some(format!("pull at queue offset {}: {e}", a.queue_offset)),
                },
                (why, _) => why,
            };
            if let Some(w) = why {
                lost.push((i, w));
            }
        }
        if lost.is_empty() {
            return Vec::new();
        }
        let (first, why) = &lost[0];
        let a = &self.acked[*first];
        // The acknowledged message just before the first lost one in the log
        // is the usual suspect (a record recovery stopped at).
        let before = self.acked.iter().filter(|b| b.phys < a.phys).max_by_key(|b| b.phys);
        let mut detail = format!(
            "{phase}: {} of {} acknowledged messages checked are not intact; first (by acknowledgement) at commit-log offset {}: {why}; it was stored by: {}",
            lost.len(),
            n,
            a.phys,
            a.request
        );
        if let Some(b) = before {
            detail.push_str(&format!(
                "; the acknowledged message before it in the log (offset {}, topic {:?}) was stored by: {}",
                b.phys, b.topic, b.request
            ));
        }
        if self.settings.keep_going {
            let gone: std::collections::HashSet<usize> = lost.iter().map(|(i, _)| *i).collect();
            let mut k = 0;
            self.acked.retain(|_| {
                k += 1;
                !gone.contains(&(k - 1))
            });
            self.unchecked_from = self.acked.len();
        }
        vec![Violation { invariant: "2 acknowledged messages are intact", detail }]
    }

    /// Stops the broker (SIGTERM or kill -9 in turn) and starts it again.
    async fn restart(&mut self) {
        self.restarts += 1;
        let clean = self.restarts % 2 == 1;
        eprintln!(
            "hostile: {} restart after batch {} (seed {})",
            if clean { "clean (SIGTERM)" } else { "kill -9" },
            self.batch,
            self.settings.seed
        );
        self.floods.clear();
        if clean {
            let code = self.spate.terminate();
            if code != Some(0) {
                self.violate(vec![Violation {
                    invariant: "5 the process is alive",
                    detail: format!("clean shutdown after batch {} exited with {code:?}", self.batch),
                }]);
            }
        } else {
            self.spate.kill9();
        }
        self.spate.restart();
        self.remember(format!(
            "--- {} restart after batch {} ---",
            if clean { "clean" } else { "kill -9" },
            self.batch
        ));
        let phase =
            format!("after the {} restart following batch {}", if clean { "clean" } else { "kill -9" }, self.batch);
        self.check(&phase, true).await;
    }

    /// Large acknowledged messages for the pull flood to ask for.
    async fn seed_fat_topic(&mut self) {
        for i in 0..12u8 {
            let cmd = send_req_with(requests::FAT_TOPIC, 0, vec![i; 1 << 20], &[]);
            let text = describe(&cmd);
            let r = self.invoke(&self.spate.broker(), cmd).await.expect("the fat topic's sends are answered");
            assert_eq!(r.code, response::SUCCESS, "seeding {}: {:?}", requests::FAT_TOPIC, r.remark);
            self.record_ack(&r, &format!("setup {text}"), Some(vec![i; 1 << 20])).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_leave_acknowledged_data_and_the_host_intact() {
    let settings = Settings::from_env();
    eprintln!(
        "hostile: seed {} (SPATE_HOSTILE_SEED), budget {} s, {} requests a batch, restart every {} batches",
        settings.seed, settings.secs, settings.batch_len, settings.restart_every
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let tmp_canary = std::env::temp_dir().join(format!("spate-hostile-canary-{}", std::process::id()));
    let canaries = Canaries::plant(dir.path(), &tmp_canary);
    let tmp = tmp_canary.display().to_string();
    let targets = Targets {
        paths: vec![
            "../canary".into(),
            "../../canary".into(),
            "../../../canary".into(),
            "../../canary/victim".into(),
            "../../canary/new".into(),
            tmp.clone(),
            format!("{tmp}/victim"),
            format!("{tmp}/new"),
            "..".into(),
            "../..".into(),
        ],
        terminate_properties: std::env::var("SPATE_HOSTILE_SKIP").is_ok_and(|v| v.contains("unterminated-properties")),
    };
    let spate = Standalone::start(&data);
    let mut h = Hostile {
        settings,
        spate,
        client: raw_client(),
        targets,
        canaries,
        acked: Vec::new(),
        unchecked_from: 0,
        ring: VecDeque::new(),
        probes_due: Vec::new(),
        probe_seq: 0,
        floods: Vec::new(),
        tried: BTreeMap::new(),
        answers: BTreeMap::new(),
        checks_held: 0,
        restarts: 0,
        anon_peak_kib: 0,
        failures: Vec::new(),
        batch: 0,
    };
    h.seed_fat_topic().await;
    h.check("before any hostile request", true).await;
    let strategy = requests::action(&h.targets);
    let started = Instant::now();
    let budget = Duration::from_secs(h.settings.secs);
    while h.batch < h.settings.batches && started.elapsed() < budget {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&h.settings.seed.to_le_bytes());
        seed[8..16].copy_from_slice(&h.batch.to_le_bytes());
        let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        for step in 0..h.settings.batch_len {
            let action = strategy.new_tree(&mut runner).expect("strategies always generate").current();
            h.run(step, action).await;
        }
        h.check(&format!("after batch {}", h.batch), false).await;
        if h.batch % h.settings.restart_every == h.settings.restart_every - 1 {
            h.restart().await;
        }
        h.batch += 1;
    }
    // End on a restart so everything acknowledged is checked across one.
    if !h.batch.is_multiple_of(h.settings.restart_every) {
        h.batch = h.batch.saturating_sub(1);
        h.restart().await;
    }
    eprintln!(
        "hostile: seed {}: {} batches in {:?}, {} restarts, {} invariant checks held, {} acknowledged messages, peak RssAnon {} MiB",
        h.settings.seed,
        h.batch,
        started.elapsed(),
        h.restarts,
        h.checks_held,
        h.acked.len(),
        h.anon_peak_kib / 1024
    );
    eprintln!("hostile: requests tried by kind: {:?}", h.tried);
    eprintln!("hostile: answers: {:?}", h.answers);
    let _ = std::fs::remove_dir_all(&tmp_canary);
    assert!(
        h.failures.is_empty(),
        "{} invariant checks failed (reports above):\n{}",
        h.failures.len(),
        h.failures.join("\n")
    );
}
