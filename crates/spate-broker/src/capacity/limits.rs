//! Rate limits per topic, consumer or producer group, and client, for sends
//! and pulls (`config/limits.json`; set with `spate admin limit`, copied to
//! slaves with the other metadata).
//!
//! A rule is a token bucket (`rate` permits a second, bursts up to `burst`;
//! governor's GCRA) or, with `shape`, a leaky bucket: a request that finds
//! no token waits for its turn, released at a steady `rate`, as long as the
//! wait stays within `maxWaitMs` and no more than `maxQueue` wait already;
//! otherwise it is rejected at once. A send counts its messages (a batch
//! of 10 takes 10 permits), a pull counts one per request.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::degrade::Class;
use crate::error::BrokerError;
use crate::persist;

/// Most rules one broker holds.
pub const MAX_RULES: usize = 10_000;
/// Longest a shaped request may be held (`maxWaitMs` is capped to it).
pub const MAX_SHAPE_WAIT: Duration = Duration::from_secs(10);
/// Most requests one shaped rule may hold at once (`maxQueue` is capped to it).
pub const MAX_SHAPE_QUEUE: u32 = 100_000;

/// What a rule limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Topic,
    /// A producer group (sends) or consumer group (pulls).
    Group,
    /// A client id (`clientId` from its heartbeats; its IP before any).
    Client,
}

/// Which requests a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Send,
    Pull,
}

/// Leaky-bucket shaping: wait for a turn instead of failing at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shape {
    /// Longest a request waits for its turn before it is rejected.
    pub max_wait_ms: u64,
    /// Most requests waiting at once; one more is rejected.
    pub max_queue: u32,
}

/// One limit, as persisted and as `spate admin limit` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitRule {
    pub target: Target,
    pub name: String,
    pub op: Op,
    /// Permits a second (messages for sends, requests for pulls).
    pub rate: u32,
    /// Permits available at once (the token bucket's size); a shaped rule
    /// uses 1, so requests leave evenly spaced.
    #[serde(default)]
    pub burst: u32,
    #[serde(default)]
    pub shape: Option<Shape>,
}

impl LimitRule {
    /// Checks the rule's numbers; the name is checked by the caller's kind.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 255 {
            return Err("name must be 1 to 255 characters".into());
        }
        if self.rate == 0 {
            return Err("rate must be at least 1 a second".into());
        }
        if let Some(s) = self.shape {
            if Duration::from_millis(s.max_wait_ms) > MAX_SHAPE_WAIT
                || s.max_queue == 0
                || s.max_queue > MAX_SHAPE_QUEUE
            {
                return Err(format!(
                    "shape: maxWaitMs at most {} and maxQueue 1 to {MAX_SHAPE_QUEUE}",
                    MAX_SHAPE_WAIT.as_millis()
                ));
            }
        }
        Ok(())
    }

    fn key(&self) -> (Target, String, Op) {
        (self.target, self.name.clone(), self.op)
    }

    fn describe(&self) -> String {
        let what = match self.target {
            Target::Topic => "topic",
            Target::Group => "group",
            Target::Client => "client",
        };
        let op = match self.op {
            Op::Send => "sends",
            Op::Pull => "pulls",
        };
        format!("{what} {} is limited to {} {op} a second", self.name, self.rate)
    }
}

/// The persisted table: rules and a version bumped on every change (a
/// slave takes its master's table when the version differs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitFile {
    pub rules: Vec<LimitRule>,
    #[serde(default)]
    pub version: u64,
    /// Priority classes of topics and groups (`normal` when absent).
    #[serde(default)]
    pub priorities: Vec<Priority>,
}

/// A topic's or group's priority class (`degrade.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Priority {
    pub target: Target,
    pub name: String,
    pub class: Class,
}

/// One rule in force.
struct Limiter {
    rule: LimitRule,
    bucket: DefaultDirectRateLimiter,
    waiting: AtomicU32,
    admitted: AtomicU64,
    rejected: AtomicU64,
}

impl Limiter {
    fn new(rule: LimitRule) -> Limiter {
        let rate = NonZeroU32::new(rule.rate).unwrap_or(NonZeroU32::MIN);
        let burst = if rule.shape.is_some() { 1 } else { rule.burst.max(1) };
        let quota = Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Limiter {
            rule,
            bucket: RateLimiter::direct(quota),
            waiting: AtomicU32::new(0),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Takes `n` permits now, or says how long until they would be there
    /// (`None`: never, more than the bucket holds).
    fn try_take(&self, n: u32) -> Result<(), Option<Duration>> {
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        match self.bucket.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Some(not_until.wait_time_from(DefaultClock::default().now()))),
            Err(_) => Err(None),
        }
    }

    /// Admits `n` permits' worth, waiting its turn if shaped; true when it waited.
    async fn admit(&self, n: u32) -> Result<bool, Limited> {
        let first = match self.try_take(n) {
            Ok(()) => {
                self.admitted.fetch_add(u64::from(n), Ordering::Relaxed);
                return Ok(false);
            }
            Err(wait) => wait,
        };
        let (Some(shape), Some(mut wait)) = (self.rule.shape, first) else {
            return Err(self.reject(n));
        };
        let max_wait = Duration::from_millis(shape.max_wait_ms);
        if wait > max_wait || self.waiting.fetch_add(1, Ordering::AcqRel) >= shape.max_queue {
            if wait <= max_wait {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            return Err(self.reject(n));
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        let outcome = loop {
            tokio::time::sleep(wait).await;
            match self.try_take(n) {
                Ok(()) => break Ok(()),
                Err(Some(w)) if tokio::time::Instant::now() + w <= deadline => wait = w,
                Err(_) => break Err(()),
            }
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match outcome {
            Ok(()) => {
                self.admitted.fetch_add(u64::from(n), Ordering::Relaxed);
                Ok(true)
            }
            Err(()) => Err(self.reject(n)),
        }
    }

    fn reject(&self, n: u32) -> Limited {
        self.rejected.fetch_add(u64::from(n), Ordering::Relaxed);
        Limited { rule: self.rule.clone(), remark: self.rule.describe() }
    }
}

/// A request over a limit.
#[derive(Debug, Clone)]
pub struct Limited {
    pub rule: LimitRule,
    /// For the response's remark.
    pub remark: String,
}

/// A rule with its counters (admin and metrics).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    #[serde(flatten)]
    pub rule: LimitRule,
    pub admitted: u64,
    pub rejected: u64,
    pub waiting: u32,
}

/// Every rule in force, by (target, name, op).
pub struct LimitTable {
    rules: RwLock<BTreeMap<(Target, String, Op), Arc<Limiter>>>,
    classes: RwLock<BTreeMap<(Target, String), Class>>,
    version: RwLock<u64>,
    path: PathBuf,
    writer: persist::TableWriter,
}

impl LimitTable {
    /// Loads `config/limits.json` (blocking; at start-up).
    pub fn load(root: &Path) -> Result<LimitTable, BrokerError> {
        let path = persist::config_path(root, "limits.json");
        let file: LimitFile = persist::load(&path)?.unwrap_or_default();
        let t = LimitTable {
            rules: RwLock::new(BTreeMap::new()),
            classes: RwLock::new(BTreeMap::new()),
            version: RwLock::new(0),
            path,
            writer: Default::default(),
        };
        t.install(file);
        Ok(t)
    }

    fn install(&self, file: LimitFile) {
        let mut rules = BTreeMap::new();
        for r in file.rules.into_iter().filter(|r| r.validate().is_ok()).take(MAX_RULES) {
            rules.insert(r.key(), Arc::new(Limiter::new(r)));
        }
        *self.rules.write() = rules;
        *self.classes.write() = file
            .priorities
            .into_iter()
            .filter(|p| p.class != Class::Normal && !p.name.is_empty())
            .take(MAX_RULES)
            .map(|p| ((p.target, p.name), p.class))
            .collect();
        *self.version.write() = file.version;
    }

    /// The class of a request: its topic's if set, else its group's, else normal.
    pub fn class_of(&self, topic: &str, group: &str) -> Class {
        let classes = self.classes.read();
        if classes.is_empty() {
            return Class::Normal;
        }
        classes
            .get(&(Target::Topic, topic.to_string()))
            .or_else(|| classes.get(&(Target::Group, group.to_string())))
            .copied()
            .unwrap_or_default()
    }

    /// Sets a topic's or group's class (`normal` removes it); false when the table is full.
    pub fn set_class(&self, target: Target, name: &str, class: Class) -> bool {
        let mut classes = self.classes.write();
        let key = (target, name.to_string());
        if class == Class::Normal {
            classes.remove(&key);
        } else {
            if !classes.contains_key(&key) && classes.len() >= MAX_RULES {
                return false;
            }
            classes.insert(key, class);
        }
        *self.version.write() += 1;
        true
    }

    /// Whether any rule exists (the hot path skips everything when not).
    pub fn is_empty(&self) -> bool {
        self.rules.read().is_empty()
    }

    /// Admits a request of `n` permits for `op` against every rule naming
    /// its topic, group or client; the first rule over its limit rejects it.
    /// True when a shaped rule held it for its turn.
    pub async fn admit(&self, op: Op, topic: &str, group: &str, client: &str, n: u32) -> Result<bool, Limited> {
        let applicable: Vec<Arc<Limiter>> = {
            let rules = self.rules.read();
            if rules.is_empty() {
                return Ok(false);
            }
            [(Target::Topic, topic), (Target::Group, group), (Target::Client, client)]
                .into_iter()
                .filter(|(_, name)| !name.is_empty())
                .filter_map(|(t, name)| rules.get(&(t, name.to_string(), op)).cloned())
                .collect()
        };
        let mut waited = false;
        for l in applicable {
            waited |= l.admit(n).await?;
        }
        Ok(waited)
    }

    /// Adds or replaces a rule (its counters start again); false when the table is full.
    pub fn upsert(&self, rule: LimitRule) -> bool {
        let mut rules = self.rules.write();
        if !rules.contains_key(&rule.key()) && rules.len() >= MAX_RULES {
            return false;
        }
        rules.insert(rule.key(), Arc::new(Limiter::new(rule)));
        *self.version.write() += 1;
        true
    }

    /// Removes a rule; false when there was none.
    pub fn delete(&self, target: Target, name: &str, op: Op) -> bool {
        let removed = self.rules.write().remove(&(target, name.to_string(), op)).is_some();
        if removed {
            *self.version.write() += 1;
        }
        removed
    }

    /// The table as persisted (and as a slave copies it).
    pub fn snapshot(&self) -> LimitFile {
        LimitFile {
            rules: self.rules.read().values().map(|l| l.rule.clone()).collect(),
            version: *self.version.read(),
            priorities: self
                .classes
                .read()
                .iter()
                .map(|((target, name), class)| Priority { target: *target, name: name.clone(), class: *class })
                .collect(),
        }
    }

    /// Every rule with its counters.
    pub fn status(&self) -> Vec<RuleStatus> {
        self.rules
            .read()
            .values()
            .map(|l| RuleStatus {
                rule: l.rule.clone(),
                admitted: l.admitted.load(Ordering::Relaxed),
                rejected: l.rejected.load(Ordering::Relaxed),
                waiting: l.waiting.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// A slave takes its master's table when it differs; true when it changed.
    pub fn replace_from_master(&self, file: LimitFile) -> bool {
        if file == self.snapshot() {
            return false;
        }
        self.install(file);
        true
    }

    /// Writes `config/limits.json`.
    pub async fn persist(&self) -> Result<(), BrokerError> {
        let bytes = serde_json::to_vec_pretty(&self.snapshot()).unwrap_or_default();
        self.writer.write(self.path.clone(), move || Some(bytes)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(target: Target, name: &str, op: Op, rate: u32, burst: u32, shape: Option<Shape>) -> LimitRule {
        LimitRule { target, name: name.into(), op, rate, burst, shape }
    }

    #[tokio::test]
    async fn a_token_bucket_admits_its_burst_then_rejects_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = LimitTable::load(dir.path()).unwrap();
        assert!(t.admit(Op::Send, "T", "g", "c", 1).await.is_ok(), "no rule: no limit");
        assert!(t.upsert(rule(Target::Topic, "T", Op::Send, 10, 5, None)));
        for _ in 0..5 {
            assert!(t.admit(Op::Send, "T", "g", "c", 1).await.is_ok());
        }
        let started = std::time::Instant::now();
        let err = t.admit(Op::Send, "T", "g", "c", 1).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(50), "a rejection does not wait");
        assert!(err.remark.contains("topic T is limited to 10 sends a second"), "{}", err.remark);
        // Other topics, and pulls of the same topic, are not limited.
        assert!(t.admit(Op::Send, "Other", "g", "c", 1).await.is_ok());
        assert!(t.admit(Op::Pull, "T", "g", "c", 1).await.is_ok());
        // A batch larger than the burst can never pass.
        assert!(t.admit(Op::Send, "T", "g", "c", 6).await.is_err());
        let s = t.status();
        assert_eq!((s[0].admitted, s[0].rejected), (5, 7));
    }

    #[tokio::test]
    async fn a_shaped_rule_releases_evenly_and_rejects_past_its_wait() {
        let dir = tempfile::tempdir().unwrap();
        let t = Arc::new(LimitTable::load(dir.path()).unwrap());
        let shape = Shape { max_wait_ms: 1000, max_queue: 100 };
        t.upsert(rule(Target::Group, "pg", Op::Send, 20, 0, Some(shape)));
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let t = t.clone();
            tasks.push(tokio::spawn(
                async move { t.admit(Op::Send, "T", "pg", "c", 1).await.map(|_| started.elapsed()) },
            ));
        }
        let mut done: Vec<Duration> = Vec::new();
        for task in tasks {
            done.push(task.await.unwrap().expect("within the wait"));
        }
        done.sort();
        // 20 a second: the tenth leaves about 450 ms after the first.
        let spread = done[9] - done[0];
        assert!(spread >= Duration::from_millis(400) && spread < Duration::from_millis(700), "{done:?}");
        // Past the longest wait: rejected now, not later.
        t.upsert(rule(Target::Group, "pg", Op::Send, 1, 0, Some(Shape { max_wait_ms: 100, max_queue: 100 })));
        assert!(t.admit(Op::Send, "T", "pg", "c", 1).await.is_ok());
        let before = std::time::Instant::now();
        assert!(t.admit(Op::Send, "T", "pg", "c", 1).await.is_err());
        assert!(before.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn rules_persist_and_a_slave_takes_the_masters_table() {
        let dir = tempfile::tempdir().unwrap();
        let t = LimitTable::load(dir.path()).unwrap();
        t.upsert(rule(Target::Client, "10.0.0.1@1", Op::Pull, 100, 100, None));
        t.persist().await.unwrap();
        let again = LimitTable::load(dir.path()).unwrap();
        assert_eq!(again.snapshot(), t.snapshot());
        let slave = LimitTable::load(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(slave.replace_from_master(t.snapshot()));
        assert!(!slave.replace_from_master(t.snapshot()), "unchanged: nothing to do");
        assert!(t.delete(Target::Client, "10.0.0.1@1", Op::Pull));
        assert!(!t.delete(Target::Client, "10.0.0.1@1", Op::Pull));
        assert!(t.is_empty());
        assert!(rule(Target::Topic, "T", Op::Send, 0, 1, None).validate().is_err());
        // Classes: the topic's wins over the group's; persisted with the rules.
        assert_eq!(t.class_of("T", "g"), Class::Normal);
        t.set_class(Target::Group, "g", Class::Core);
        t.set_class(Target::Topic, "T", Class::Bulk);
        assert_eq!((t.class_of("T", "g"), t.class_of("U", "g")), (Class::Bulk, Class::Core));
        t.persist().await.unwrap();
        assert_eq!(LimitTable::load(dir.path()).unwrap().class_of("T", "x"), Class::Bulk);
        t.set_class(Target::Topic, "T", Class::Normal);
        assert_eq!(t.class_of("T", "x"), Class::Normal);
    }
}
