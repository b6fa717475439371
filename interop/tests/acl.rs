//! ACL interop: a real `spate standalone` with authentication and
//! authorization on, driven by the stock `rocketmq-client-rust` 1.0.0
//! client signing with its own `AclClientRPCHook` + `SessionCredentials`.
//!
//! Flow: a Super user (initAuthenticationUser) creates the topic, the
//! users and their ACLs with `spate admin`. A Normal user with Pub+Sub on
//! the topic and Sub on its group produces N messages and push-consumes
//! them all; one message is failed once and must come back through the
//! group's retry topic, which the group's Sub covers. Then producers and
//! consumers with a wrong secret, an unknown user, a disabled user and a
//! user lacking Pub (producing) or Sub (consuming) try: every send fails
//! with NO_PERMISSION (16) and the server's reason, no refused consumer gets
//! a message, the valid consumer sees nothing new, and the topic's max
//! offsets (read by the Super user) still add up to N. `run.sh` runs it
//! with JSON and with ROCKETMQ binary headers.
//!
//! Environment: `SPATE_BIN` (see tests/common), `ACL_INTEROP_MESSAGES`
//! (default 20).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rocketmq_client_rust::{
    AclClientRPCHook, ClientResult, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext,
    ConsumeConcurrentlyStatus, DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer, MessageListenerConcurrently,
    SendStatus, SessionCredentials,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_observability::TelemetryRuntimeGuard;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel;

use common::{admin, bounded, client_runtime_owner, SpateServer};

const TOPIC: &str = "SpateAclTopic";
const QUEUES: &str = "4";
/// initAuthenticationUser: the Super user that administers the rest.
const ROOT: (&str, &str) = ("spate_root", "root-secret-1");
/// Pub+Sub on the topic, Sub on GROUP and WRONG_SECRET_GROUP.
const ALICE: (&str, &str) = ("alice", "alice-secret-1");
/// Alice's grants on DISABLED_GROUP, then disabled.
const DAVE: (&str, &str) = ("dave", "dave-secret-1");
/// Pub on the topic, Sub on PAT_GROUP: no Sub on the topic.
const PAT: (&str, &str) = ("pat", "pat-secret-1");
/// Sub on the topic and SAM_GROUP: no Pub.
const SAM: (&str, &str) = ("sam", "sam-secret-1");
/// Never created.
const MALLORY: (&str, &str) = ("mallory", "mallory-secret-1");
const WRONG_SECRET: &str = "not-alice-secret";
const GROUP: &str = "spate_acl_consumer";
const WRONG_SECRET_GROUP: &str = "spate_acl_wrong_secret";
const DISABLED_GROUP: &str = "spate_acl_disabled";
const UNKNOWN_GROUP: &str = "spate_acl_unknown";
const PAT_GROUP: &str = "spate_acl_pat";
const SAM_GROUP: &str = "spate_acl_sam";
/// NO_PERMISSION, the code RocketMQ's ACL 2.0 refuses with.
const NO_PERMISSION: i32 = 16;
const DEFAULT_MESSAGES: usize = 20;
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refused consumer is given to (wrongly) receive something.
const REFUSED_CONSUME_WINDOW: Duration = Duration::from_secs(4);
const SEND_TIMEOUT_MS: u64 = 3_000;

fn hook(creds: (&str, &str)) -> Arc<AclClientRPCHook> {
    Arc::new(AclClientRPCHook::new(SessionCredentials::with_keys(creds.0, creds.1)))
}

/// The error and every source under it, one line: the client wraps the
/// server's answer (code and remark) in its own errors.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        text.push_str(" <- ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

fn message_count() -> usize {
    std::env::var("ACL_INTEROP_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MESSAGES)
}

/// Deliveries by message key: the reconsume count of each.
#[derive(Clone, Default)]
struct Deliveries(Arc<Mutex<HashMap<String, Vec<i32>>>>);

/// Records every delivery; fails the first delivery of `fail_once_key`.
#[derive(Clone)]
struct Recorder {
    got: Deliveries,
    fail_once_key: Option<String>,
}

impl MessageListenerConcurrently for Recorder {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> ClientResult<ConsumeConcurrentlyStatus> {
        let mut got = self.got.0.lock().unwrap();
        let mut fail = false;
        for m in msgs {
            let key = m.message_inner().property("KEYS").unwrap_or("<no key>").to_string();
            fail |= Some(&key) == self.fail_once_key.as_ref() && m.reconsume_times() == 0;
            got.entry(key).or_default().push(m.reconsume_times());
        }
        Ok(if fail { ConsumeConcurrentlyStatus::ReconsumeLater } else { ConsumeConcurrentlyStatus::ConsumeSuccess })
    }
}

/// Makes the topic, the users and their ACLs as the Super user. Retried
/// while the broker has not yet registered with the name server.
fn provision(namesrv: &str) {
    let root = |args: &[&str]| admin(namesrv, ROOT.0, ROOT.1, args);
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while let Err(e) = root(&["topic", "create", TOPIC, "-r", QUEUES, "-w", QUEUES]) {
        assert!(Instant::now() < deadline, "topic create kept failing: {e}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let steps: &[&[&str]] = &[
        &["user", "create", ALICE.0, "--password", ALICE.1],
        &["acl", "create", "--subject", "User:alice", "--resources", &format!("Topic:{TOPIC}"), "--actions", "Pub,Sub"],
        &[
            "acl",
            "update",
            "--subject",
            "User:alice",
            "--resources",
            &format!("Group:{GROUP},Group:{WRONG_SECRET_GROUP}"),
            "--actions",
            "Sub",
        ],
        &["user", "create", DAVE.0, "--password", DAVE.1],
        &["acl", "create", "--subject", "User:dave", "--resources", &format!("Topic:{TOPIC}"), "--actions", "Pub,Sub"],
        &[
            "acl",
            "update",
            "--subject",
            "User:dave",
            "--resources",
            &format!("Group:{DISABLED_GROUP}"),
            "--actions",
            "Sub",
        ],
        &["user", "update", DAVE.0, "--status", "disable"],
        &["user", "create", PAT.0, "--password", PAT.1],
        &["acl", "create", "--subject", "User:pat", "--resources", &format!("Topic:{TOPIC}"), "--actions", "Pub"],
        &["acl", "update", "--subject", "User:pat", "--resources", &format!("Group:{PAT_GROUP}"), "--actions", "Sub"],
        &["user", "create", SAM.0, "--password", SAM.1],
        &[
            "acl",
            "create",
            "--subject",
            "User:sam",
            "--resources",
            &format!("Topic:{TOPIC},Group:{SAM_GROUP}"),
            "--actions",
            "Sub",
        ],
    ];
    for args in steps {
        root(args).unwrap_or_else(|e| panic!("provisioning failed: {e}"));
    }
    println!("provisioned {TOPIC} and users alice, dave (disabled), pat (no Sub), sam (no Pub)");
}

/// The topic's max offsets added up, read by the Super user.
fn stored_messages(namesrv: &str) -> u64 {
    let out = admin(namesrv, ROOT.0, ROOT.1, &["--json", "topic", "status", TOPIC]).unwrap_or_else(|e| panic!("{e}"));
    let queues: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("topic status JSON: {e}: {out}"));
    let queues = queues.as_array().unwrap_or_else(|| panic!("topic status is not a list: {out}"));
    assert_eq!(queues.len().to_string(), QUEUES, "queues of {TOPIC}: {out}");
    queues.iter().map(|q| q["max_offset"].as_u64().unwrap_or_else(|| panic!("no max_offset in {q}"))).sum()
}

fn message(i: usize, run_id: &str) -> Message {
    Message::builder()
        .topic(TOPIC)
        .tags(["TagA", "TagB"][i % 2])
        .key(format!("acl-key-{i:04}"))
        .body(format!("acl interop #{i} {run_id} Grüße ✓").into_bytes())
        .build()
        .expect("message")
}

fn producer(
    client_runtime: &Arc<ClientRuntime>,
    namesrv: &str,
    creds: (&str, &str),
    group: String,
) -> DefaultMQProducer {
    DefaultMQProducer::builder(client_runtime.clone())
        .producer_group(group)
        .name_server_addr(namesrv.to_string())
        .send_msg_timeout(SEND_TIMEOUT_MS as u32)
        .retry_times_when_send_failed(0)
        .rpc_hook(hook(creds))
        .build()
}

async fn push_consumer(
    client_runtime: &Arc<ClientRuntime>,
    namesrv: &str,
    creds: (&str, &str),
    group: &str,
    listener: Recorder,
) -> DefaultMQPushConsumer {
    let mut consumer = DefaultMQPushConsumer::builder(client_runtime.clone())
        .consumer_group(group.to_string())
        .name_server_addr(namesrv.to_string())
        .message_model(MessageModel::Clustering)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .rpc_hook(Some(hook(creds) as _))
        .build();
    bounded("subscribe", SETUP_TIMEOUT, consumer.subscribe(TOPIC, "*")).await.expect("subscribe");
    consumer.register_message_listener_concurrently(listener);
    consumer
}

#[test]
fn stock_client_with_and_without_credentials() {
    // Short delay levels: the failed delivery comes back (level 3) within 300 ms.
    let levels = (1..=18).map(|l| format!("{}ms", 100 * l)).collect::<Vec<_>>().join(" ");
    let server = SpateServer::start(&format!(
        "authenticationEnabled=true\nauthorizationEnabled=true\n\
         initAuthenticationUser={{\"username\":\"{}\",\"password\":\"{}\"}}\nmessageDelayLevel={levels}\n",
        ROOT.0, ROOT.1
    ));
    let namesrv = server.namesrv_addr();
    provision(&namesrv);
    let n = message_count();
    assert_eq!(stored_messages(&namesrv), 0, "a new topic is empty");

    let owner = client_runtime_owner();
    let telemetry = TelemetryRuntimeGuard::noop();
    let client_runtime = ClientRuntime::try_new(
        owner.root_context().component("acl-interop-client"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    )
    .expect("client runtime");
    let run_id = format!("{}", std::process::id());

    owner.block_on(async {
        // --- valid credentials: N sends, all consumed, one retried -----------
        let mut p = producer(&client_runtime, &namesrv, ALICE, format!("acl_producer_{run_id}"));
        bounded("producer start", SETUP_TIMEOUT, p.start()).await.expect("producer start");
        for i in 0..n {
            let r = bounded("send", SETUP_TIMEOUT, p.send_with_timeout(message(i, &run_id), SEND_TIMEOUT_MS))
                .await
                .unwrap_or_else(|e| panic!("alice's send #{i} failed: {e}"))
                .unwrap_or_else(|| panic!("alice's send #{i}: no SendResult"));
            assert_eq!(r.send_status, SendStatus::SendOk, "alice's send #{i}: {r:?}");
        }
        println!("rocketmq-client-rust producer as alice: {n} messages sent");

        let got = Deliveries::default();
        let retried_key = "acl-key-0000".to_string();
        let listener = Recorder { got: got.clone(), fail_once_key: Some(retried_key.clone()) };
        let mut consumer = push_consumer(&client_runtime, &namesrv, ALICE, GROUP, listener).await;
        bounded("consumer start", SETUP_TIMEOUT, consumer.start()).await.expect("alice's consumer start");
        let deadline = Instant::now() + CONSUME_TIMEOUT;
        loop {
            let (distinct, retried) = {
                let g = got.0.lock().unwrap();
                (g.len(), g.get(&retried_key).is_some_and(|times| times.iter().any(|&t| t >= 1)))
            };
            if distinct >= n && retried {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "alice's consumer: {distinct} of {n} messages, failed one redelivered: {retried}, within \
                 {CONSUME_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("rocketmq-client-rust push consumer as alice: all {n} messages, the failed one back through the retry topic");

        // --- refused sends ----------------------------------------------------
        // The name server refuses the route lookup of a user who cannot sign
        // in, and the client keeps its answer (code and remark) as the
        // error's source. A user who may look the route up but not Pub is
        // refused by the broker; client 1.0.0 keeps only that answer's code
        // (`broker_response_code`) and drops its remark.
        let refused_senders = [
            ("wrong secret", (ALICE.0, WRONG_SECRET), Some("check signature failed for AccessKey alice")),
            ("unknown user", MALLORY, Some("User:mallory is not found")),
            ("disabled user", DAVE, Some("User:dave is disabled")),
            ("user without Pub", SAM, None),
        ];
        for (what, creds, remark) in refused_senders {
            let mut p = producer(&client_runtime, &namesrv, creds, format!("acl_refused_{}_{run_id}", creds.0));
            bounded("producer start", SETUP_TIMEOUT, p.start()).await.expect("refused producer start");
            let result = bounded("send", SETUP_TIMEOUT, p.send_with_timeout(message(n, &run_id), SEND_TIMEOUT_MS)).await;
            let err = match result {
                Err(e) => e,
                Ok(r) => panic!("{what}: the send was accepted: {r:?}"),
            };
            let text = error_chain(&err);
            let code = err.broker_response_code();
            println!("{what}: send refused (broker_response_code {code:?}): {text}");
            match remark {
                Some(remark) => {
                    assert!(text.contains(&format!("CODE: {NO_PERMISSION} ")), "{what}: no code {NO_PERMISSION} in: {text}");
                    assert!(text.contains(remark), "{what}: the remark `{remark}` is not in: {text}");
                }
                None => assert_eq!(code, Some(NO_PERMISSION), "{what}: the broker's code, in: {text}"),
            }
            let _ = tokio::time::timeout(SETUP_TIMEOUT, p.shutdown()).await;
        }

        // --- refused consumers, all at once, none may get a message ----------
        // Started beside them, sam (Sub on the topic and its group) must get
        // every message: the window was long enough to be refused in.
        let consumers = [
            ("wrong secret", (ALICE.0, WRONG_SECRET), WRONG_SECRET_GROUP, false),
            ("unknown user", MALLORY, UNKNOWN_GROUP, false),
            ("disabled user", DAVE, DISABLED_GROUP, false),
            ("user without Sub on the topic", PAT, PAT_GROUP, false),
            ("sam (allowed)", SAM, SAM_GROUP, true),
        ];
        let window_start = Instant::now();
        let mut started = Vec::new();
        for (what, creds, group, allowed) in consumers {
            let seen = Deliveries::default();
            let listener = Recorder { got: seen.clone(), fail_once_key: None };
            let mut c = push_consumer(&client_runtime, &namesrv, creds, group, listener).await;
            bounded("consumer start", SETUP_TIMEOUT, c.start()).await.unwrap_or_else(|e| {
                panic!("{what}: consumer start failed (a refusal should show as no messages): {e}")
            });
            started.push((what, allowed, c, seen));
        }
        let control = started.iter().find(|(_, allowed, _, _)| *allowed).map(|s| s.3.clone()).expect("sam's consumer");
        while control.0.lock().unwrap().len() < n {
            assert!(
                window_start.elapsed() < CONSUME_TIMEOUT,
                "sam's consumer got {} of {n} messages within {CONSUME_TIMEOUT:?}",
                control.0.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(REFUSED_CONSUME_WINDOW.saturating_sub(window_start.elapsed())).await;
        for (what, allowed, mut c, seen) in started {
            let count = seen.0.lock().unwrap().len();
            if allowed {
                assert_eq!(count, n, "{what}: distinct messages");
            } else {
                assert_eq!(count, 0, "{what}: a refused consumer received {count} messages");
            }
            let _ = tokio::time::timeout(SETUP_TIMEOUT, c.shutdown()).await;
        }
        println!(
            "refused consumers (wrong secret, unknown, disabled, no Sub): no message in {:?}; sam's beside them: all {n}",
            window_start.elapsed()
        );

        // --- nothing refused was stored or delivered --------------------------
        let distinct = got.0.lock().unwrap().len();
        assert_eq!(distinct, n, "alice's consumer saw {distinct} distinct messages after the refused sends, want {n}");
        let _ = tokio::time::timeout(SETUP_TIMEOUT, consumer.shutdown()).await;
        let _ = tokio::time::timeout(SETUP_TIMEOUT, p.shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_secs(20), client_runtime.shutdown()).await;
    });
    let _ = owner.shutdown_runtime_blocking();
    let _ = telemetry.shutdown();

    let stored = stored_messages(&namesrv);
    // The failed delivery went to %RETRY%<group>, not to the topic.
    assert_eq!(stored, n as u64, "{TOPIC} holds {stored} messages, want the {n} alice sent");
    println!("{TOPIC}: max offsets add up to {stored}: no refused send was stored");
    drop(server);
}
