//! RocketMQ 5's official Python client (`rocketmq-python-client`, pinned in
//! `python/requirements.txt`) against a real `spate standalone` over gRPC,
//! on the broker's own port (HTTP/2 sniffed; no dedicated gRPC port).
//!
//! Each scenario of `python/interop.py` runs in a fresh topic and group:
//! 1,000 messages sent and received by a simple consumer with byte-exact
//! bodies, tags, keys and properties; a message left un-acked past its
//! invisible time redelivered; FIFO message groups in order; a delayed
//! message not delivered early and a second one recalled before it was
//! due never delivered; a transaction committed and one rolled back by the
//! producer, and one the producer leaves open committed through the
//! server's check-back on its Telemetry stream; a push consumer consuming
//! every message once while it holds one past its invisible time (the
//! broker renews it). Then across protocols:
//! rocketmq-client-rust (remoting) sends and the Python simple consumer
//! (gRPC) reads every message, and the Python producer sends and
//! rocketmq-client-rust's push consumer reads them; the same with
//! Node.js's official client (`node-grpc/`, `SPATE_NODE_GRPC`).
//!
//! Environment: `SPATE_PYTHON` (a Python with the pinned client installed;
//! `run.sh` makes it), `SPATE_BIN`, `GRPC_INTEROP_MESSAGES` (default 1000).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded, client_runtime_owner, SpateServer};
use rocketmq_client_rust::{
    ClientResult, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
    DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer, MessageListenerConcurrently, SendStatus,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_observability::TelemetryRuntimeGuard;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel;

const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(60);
const SEND_TIMEOUT_MS: u64 = 5_000;
const CROSS_MESSAGES: usize = 50;

/// An official RocketMQ 5 client's scenario script: the same command line
/// and JSON line for each language.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sdk {
    /// `python/interop.py` with `SPATE_PYTHON`.
    Python,
    /// `node-grpc/interop.js` with `node`, its packages in `SPATE_NODE_GRPC`.
    Node,
}

impl Sdk {
    fn command(self) -> Command {
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        match self {
            Sdk::Python => {
                let python = std::env::var_os("SPATE_PYTHON").expect(
                    "SPATE_PYTHON must name a Python with interop/python/requirements.txt installed (interop/run.sh makes one)",
                );
                let mut c = Command::new(python);
                c.arg(here.join("python/interop.py"));
                c
            }
            Sdk::Node => {
                let dir = std::env::var_os("SPATE_NODE_GRPC")
                    .expect("SPATE_NODE_GRPC must name interop/node-grpc with its packages installed (its setup.sh)");
                let mut c = Command::new("node");
                c.arg(PathBuf::from(&dir).join("interop.js")).current_dir(dir);
                c
            }
        }
    }
}

/// What one run of `interop.py` printed and how it ended.
struct Run {
    ok: bool,
    json: serde_json::Value,
    line: String,
    stderr: String,
}

/// Runs one scenario of the Python client with `env` set.
fn run(endpoint: &str, topic: &str, group: &str, name: &str, extra: &[&str], env: &[(&str, &std::path::Path)]) -> Run {
    run_sdk(Sdk::Python, endpoint, topic, group, name, extra, env)
}

/// Runs one scenario of an SDK's script with `env` set.
fn run_sdk(
    sdk: Sdk,
    endpoint: &str,
    topic: &str,
    group: &str,
    name: &str,
    extra: &[&str],
    env: &[(&str, &std::path::Path)],
) -> Run {
    let started = Instant::now();
    let out = sdk
        .command()
        .args(["--endpoint", endpoint, "--topic", topic, "--group", group, "--scenario", name])
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {sdk:?} client: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default().to_string();
    println!("{sdk:?} {name} ({:?}, {}): {line}", started.elapsed(), out.status);
    let json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
    Run { ok: out.status.success(), json, line, stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// Runs one scenario of the Python client that must succeed; its JSON line.
fn scenario(endpoint: &str, topic: &str, group: &str, name: &str, extra: &[&str]) -> serde_json::Value {
    sdk_scenario(Sdk::Python, endpoint, topic, group, name, extra)
}

/// Runs one scenario of an SDK's script that must succeed; its JSON line.
fn sdk_scenario(sdk: Sdk, endpoint: &str, topic: &str, group: &str, name: &str, extra: &[&str]) -> serde_json::Value {
    let r = run_sdk(sdk, endpoint, topic, group, name, extra, &[]);
    assert!(
        r.ok && r.json["ok"] == serde_json::Value::Bool(true),
        "{sdk:?} {name} failed:\n{}\n---- stderr ----\n{}",
        r.line,
        r.stderr
    );
    r.json
}

/// Runs one scenario that must be refused; its JSON line.
fn failing_scenario(endpoint: &str, topic: &str, group: &str, name: &str, extra: &[&str]) -> serde_json::Value {
    let r = run(endpoint, topic, group, name, extra, &[]);
    assert!(!r.ok, "{name} should have been refused: {}", r.line);
    r.json
}

#[test]
fn python_client_over_grpc() {
    // No dedicated gRPC port: the broker's remoting port serves both.
    let server = SpateServer::start(
        // Halves are checked once 8 s old: after the scenario ends the
        // first two itself, before its recv timeout for the third.
        // Push consumers' messages hidden 3 s at a time, renewed 1 s ahead.
        "grpcServerPort=0\ntransactionCheckInterval=300\ntransactionTimeOut=8000\n\
         defaultInvisibleTimeMills=3000\nrenewAheadTimeMillis=1000\nrenewSliceTimeMillis=3000\n",
    );
    let endpoint = format!("127.0.0.1:{}", server.broker_port);
    let n: usize = std::env::var("GRPC_INTEROP_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let run = std::process::id();

    let v = scenario(
        &endpoint,
        &format!("PyMain{run}"),
        &format!("py_main_{run}"),
        "send-receive",
        &["--count", &n.to_string()],
    );
    assert_eq!(v["received"], serde_json::json!(n), "{v}");
    assert_eq!(v["acks"], serde_json::json!(n), "{v}");

    let v = scenario(&endpoint, &format!("PyRedeliver{run}"), &format!("py_redeliver_{run}"), "redeliver", &[]);
    assert_eq!(v["received"], serde_json::json!(2), "one delivery, then the redelivery: {v}");

    scenario(&endpoint, &format!("PyFifo{run}"), &format!("py_fifo_{run}"), "fifo", &["--count", "90"]);
    scenario(&endpoint, &format!("PyDelay{run}"), &format!("py_delay_{run}"), "delay", &[]);
    let v = scenario(&endpoint, &format!("PyTx{run}"), &format!("py_tx_{run}"), "transaction", &[]);
    assert_eq!(v["received"], serde_json::json!(2), "committed by the producer and by check-back: {v}");

    // The listener holds one message 8 s, past two invisible times: the
    // broker's renewals keep it from coming back while it is consumed.
    let v = scenario(
        &endpoint,
        &format!("PyPush{run}"),
        &format!("py_push_{run}"),
        "push",
        &["--count", "200", "--hold", "8"],
    );
    assert_eq!(v["deliveries"], serde_json::json!(200), "each message consumed once: {v}");

    cross_protocol(Sdk::Python, &server, &endpoint, run);
}

/// Node.js's official client across protocols, as the Python one above
/// (its other scenarios run in `node-grpc/run.sh`).
#[test]
fn node_client_across_protocols() {
    let server = SpateServer::start("grpcServerPort=0\n");
    let endpoint = format!("127.0.0.1:{}", server.broker_port);
    cross_protocol(Sdk::Node, &server, &endpoint, std::process::id());
}

/// rocketmq-client-rust sends, Python receives; Python sends,
/// rocketmq-client-rust receives.
fn cross_protocol(sdk: Sdk, server: &SpateServer, endpoint: &str, run: u32) {
    let namesrv = server.namesrv_addr();
    let to_grpc = format!("CrossToGrpc{run}");
    let from_grpc = format!("CrossFromGrpc{run}");
    for topic in [&to_grpc, &from_grpc] {
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while let Err(e) = common::admin(&namesrv, "", "", &["topic", "create", topic, "-r", "4", "-w", "4"]) {
            assert!(Instant::now() < deadline, "topic create: {e}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let owner = client_runtime_owner();
    let telemetry = TelemetryRuntimeGuard::noop();
    let client_runtime = ClientRuntime::try_new(
        owner.root_context().component("grpc-cross"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    )
    .expect("client runtime");

    owner.block_on(async {
        let mut producer = DefaultMQProducer::builder(client_runtime.clone())
            .producer_group(format!("cross_producer_{run}"))
            .name_server_addr(namesrv.clone())
            .send_msg_timeout(SEND_TIMEOUT_MS as u32)
            .build();
        bounded("producer start", SETUP_TIMEOUT, producer.start()).await.expect("producer start");
        for i in 0..CROSS_MESSAGES {
            let msg: Message = Message::builder()
                .topic(&to_grpc)
                .body(format!("spate-cross-{i}").into_bytes())
                .build()
                .expect("message");
            let r = bounded(
                "send",
                Duration::from_millis(4 * SEND_TIMEOUT_MS),
                producer.send_with_timeout(msg, SEND_TIMEOUT_MS),
            )
            .await
            .unwrap_or_else(|e| panic!("remoting send #{i}: {e}"))
            .unwrap_or_else(|| panic!("remoting send #{i}: no result"));
            assert_eq!(r.send_status, SendStatus::SendOk, "remoting send #{i}: {r:?}");
        }
    });
    let count = CROSS_MESSAGES.to_string();
    sdk_scenario(sdk, endpoint, &to_grpc, &format!("cross_sdk_{run}"), "receive-only", &["--count", &count]);
    sdk_scenario(sdk, endpoint, &from_grpc, &format!("cross_sdk_sender_{run}"), "send-only", &["--count", &count]);
    let got = owner.block_on(async {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let mut consumer = DefaultMQPushConsumer::builder(client_runtime.clone())
            .consumer_group(format!("cross_remoting_{run}"))
            .name_server_addr(namesrv.clone())
            .message_model(MessageModel::Clustering)
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            .build();
        bounded("subscribe", SETUP_TIMEOUT, consumer.subscribe(&from_grpc, "*")).await.expect("subscribe");
        consumer.register_message_listener_concurrently(Bodies(seen.clone()));
        bounded("consumer start", SETUP_TIMEOUT, consumer.start()).await.expect("consumer start");
        let started = Instant::now();
        while seen.lock().unwrap().len() < CROSS_MESSAGES && started.elapsed() < CONSUME_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = tokio::time::timeout(SETUP_TIMEOUT, consumer.shutdown()).await;
        let got = seen.lock().unwrap().clone();
        got
    });
    let want: BTreeSet<String> = (0..CROSS_MESSAGES).map(|i| format!("spate-cross-{i}")).collect();
    assert_eq!(got, want, "the remoting consumer read exactly the bodies the Python producer sent");
    println!("cross-protocol: {CROSS_MESSAGES} remoting -> gRPC and {CROSS_MESSAGES} gRPC -> remoting, bodies exact");
}

/// Records each body as text.
struct Bodies(Arc<Mutex<BTreeSet<String>>>);

impl MessageListenerConcurrently for Bodies {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> ClientResult<ConsumeConcurrentlyStatus> {
        let mut seen = self.0.lock().unwrap();
        for m in msgs {
            seen.insert(String::from_utf8_lossy(m.body().as_deref().unwrap_or_default()).into_owned());
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// With authentication and authorization on, the Python client signs
/// its calls (MQv2-HMAC-SHA1) and the broker's users and policies decide:
/// a user with Pub and Sub on the topic and group sends and receives; a
/// wrong secret and a user with Sub only cannot send, and nothing they
/// tried was stored.
#[test]
fn python_client_over_grpc_with_acl() {
    let server = SpateServer::start(
        "grpcServerPort=0\nauthenticationEnabled=true\nauthorizationEnabled=true\n\
         initAuthenticationUser={\"username\":\"grpc_root\",\"password\":\"grpc-root-secret\"}\n",
    );
    let endpoint = format!("127.0.0.1:{}", server.broker_port);
    let namesrv = server.namesrv_addr();
    let admin = |args: &[&str]| common::admin(&namesrv, "grpc_root", "grpc-root-secret", args);
    let deadline = Instant::now() + SETUP_TIMEOUT;
    while let Err(e) = admin(&["topic", "create", "GrpcAclTopic", "-r", "4", "-w", "4"]) {
        assert!(Instant::now() < deadline, "topic create: {e}");
        std::thread::sleep(Duration::from_millis(300));
    }
    admin(&["user", "create", "grpc_rw", "--password", "rw-secret"]).expect("user");
    admin(&[
        "acl",
        "create",
        "--subject",
        "User:grpc_rw",
        "--resources",
        "Topic:GrpcAclTopic,Group:grpc_acl_group",
        "--actions",
        "Pub,Sub",
    ])
    .expect("acl");
    admin(&["user", "create", "grpc_ro", "--password", "ro-secret"]).expect("user");
    admin(&[
        "acl",
        "create",
        "--subject",
        "User:grpc_ro",
        "--resources",
        "Topic:GrpcAclTopic,Group:grpc_acl_group",
        "--actions",
        "Sub",
    ])
    .expect("acl");

    let (t, g) = ("GrpcAclTopic", "grpc_acl_group");
    let v = failing_scenario(&endpoint, t, g, "send-only", &["--count", "3", "--ak", "grpc_rw", "--sk", "wrong"]);
    assert_eq!(v["ok"], serde_json::Value::Bool(false), "{v}");
    let v = failing_scenario(&endpoint, t, g, "send-only", &["--count", "3", "--ak", "grpc_ro", "--sk", "ro-secret"]);
    assert_eq!(v["ok"], serde_json::Value::Bool(false), "{v}");
    let v = failing_scenario(&endpoint, t, g, "send-only", &["--count", "3"]);
    assert_eq!(v["ok"], serde_json::Value::Bool(false), "no credentials: {v}");
    // The allowed user sends and receives exactly its own messages: none
    // of the refused sends above was stored.
    let v = scenario(
        &endpoint,
        t,
        g,
        "send-receive",
        &["--count", "20", "--decoys", "0", "--ak", "grpc_rw", "--sk", "rw-secret"],
    );
    assert_eq!(v["received"], serde_json::json!(20), "{v}");
}

/// TLS on the same port: the broker enforces TLS (`tlsMode=enforcing`, a
/// plaintext connection is closed), with a certificate for 127.0.0.1 the
/// Python client is told to trust (gRPC's `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`);
/// it negotiates h2 by ALPN and sends and receives as in plaintext.
#[test]
fn python_client_over_grpc_with_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
    let server = SpateServer::start(&format!(
        "grpcServerPort=0\ntlsMode=enforcing\ntls.server.certPath={}\ntls.server.keyPath={}\n",
        cert.display(),
        key.display()
    ));
    let endpoint = format!("127.0.0.1:{}", server.broker_port);
    let r = run(
        &endpoint,
        "GrpcTlsTopic",
        "grpc_tls_group",
        "send-receive",
        &["--count", "50", "--tls"],
        &[("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", cert.as_path())],
    );
    assert!(r.ok, "over TLS: {}\n{}", r.line, r.stderr);
    let v = r.json;
    assert_eq!(v["received"], serde_json::json!(50), "{v}");
    // Plaintext is refused on that port: the same client without TLS fails.
    let v = failing_scenario(
        &endpoint,
        "GrpcTlsTopic",
        "grpc_tls_plain",
        "send-only",
        &["--count", "1", "--request-timeout", "2"],
    );
    assert_eq!(v["ok"], serde_json::Value::Bool(false), "{v}");
}
