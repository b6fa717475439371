//! Authentication and authorization against the real binary: signed
//! requests from known users get what their policies grant, everything
//! else is refused with NO_PERMISSION and changes nothing, and every
//! request code a server handles has an entry in its authorization table.

mod common;

use std::time::Duration;

use common::{call, pull_req, raw_client, send_req, Standalone};
use spate_remoting::access::{broker_rule, code, namesrv_rule};
use spate_remoting::protocol::{
    json, perm, RegisterBrokerBody, TopicConfig, TopicConfigSerializeWrapper, TopicRouteData,
};
use spate_remoting::{auth_admin, request, response, ClientConfig, Credentials, RemotingClient, RemotingCommand};

const ROOT: (&str, &str) = ("rocketmq", "root-secret-1");

fn secured(dir: &tempfile::TempDir) -> Standalone {
    let init = format!(r#"initAuthenticationUser={{"username":"{}","password":"{}"}}"#, ROOT.0, ROOT.1);
    Standalone::start_with(
        &dir.path().join("data"),
        &["authenticationEnabled=true", "authorizationEnabled=true", init.as_str()],
    )
}

fn client(ak: &str, sk: &str) -> RemotingClient {
    let mut c = ClientConfig::default();
    c.connection.credentials = Some(Credentials::new(ak, sk));
    RemotingClient::new(c, None)
}

async fn ok(c: &RemotingClient, addr: &str, req: RemotingCommand) -> RemotingCommand {
    let r = call(c, addr, req).await;
    assert_eq!(r.code, response::SUCCESS, "{addr}: {:?}", r.remark);
    r
}

/// Creates `name` on the broker and the name server, with one ACL entry
/// per (resource, actions).
async fn user(root: &RemotingClient, s: &Standalone, name: &str, password: &str, grants: &[(&str, &[&str])]) {
    let u: spate_auth::User =
        serde_json::from_value(serde_json::json!({"username": name, "password": password})).unwrap();
    let entries: Vec<serde_json::Value> = grants
        .iter()
        .map(|(r, actions)| serde_json::json!({"resource": r, "actions": actions, "decision": "Allow"}))
        .collect();
    let acl: spate_auth::Acl = serde_json::from_value(
        serde_json::json!({"subject": format!("User:{name}"), "policies": [{"entries": entries}]}),
    )
    .unwrap();
    for addr in [s.broker(), s.namesrv()] {
        ok(root, &addr, auth_admin::create_user_request(&u)).await;
        if !grants.is_empty() {
            ok(root, &addr, auth_admin::put_acl_request(&acl, true)).await;
        }
    }
}

async fn create_topic(root: &RemotingClient, s: &Standalone, topic: &str) {
    let req = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
        .with("topic", topic)
        .with("readQueueNums", 1)
        .with("writeQueueNums", 1)
        .with("perm", 6);
    ok(root, &s.broker(), req).await;
}

async fn max_offset(root: &RemotingClient, s: &Standalone, topic: &str) -> i64 {
    let req = RemotingCommand::request(request::GET_MAX_OFFSET).with("topic", topic).with("queueId", 0);
    let r = ok(root, &s.broker(), req).await;
    r.field("offset").and_then(|o| o.parse().ok()).expect("offset field")
}

fn denied(r: &RemotingCommand, what: &str, mentions: &str) {
    assert_eq!(r.code, response::NO_PERMISSION, "{what}: {:?}", r.remark);
    let remark = r.remark.clone().unwrap_or_default();
    assert!(remark.contains(mentions), "{what}: remark {remark:?} should name {mentions}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_get_what_their_policies_grant_and_every_refused_request_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = secured(&dir);
    let root = client(ROOT.0, ROOT.1);
    create_topic(&root, &s, "Granted").await;
    create_topic(&root, &s, "Other").await;
    user(&root, &s, "alice", "alice-secret", &[("Topic:Granted", &["Pub", "Sub"]), ("Group:cg", &["Sub"])]).await;
    user(&root, &s, "pubonly", "pubonly-secret", &[("Topic:Granted", &["Pub"]), ("Group:cg", &["Sub"])]).await;
    user(&root, &s, "sleeper", "sleeper-secret", &[("Topic:Granted", &["Pub", "Sub"])]).await;
    let disable = serde_json::json!({"username": "sleeper", "userStatus": "disable"});
    ok(&root, &s.broker(), auth_admin::update_user_request(&disable, "sleeper")).await;

    let alice = client("alice", "alice-secret");
    let body = || b"granted".to_vec();
    ok(&alice, &s.broker(), send_req("Granted", 0, body())).await;
    let route =
        ok(&alice, &s.namesrv(), RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "Granted"))
            .await;
    assert!(!route.body.is_empty());
    let pulled = call(&alice, &s.broker(), pull_req("Granted", 0, 0, 0, "*")).await;
    assert_eq!(pulled.code, response::SUCCESS, "alice pulls what she may: {:?}", pulled.remark);

    // The consume queue follows an answered send within milliseconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while max_offset(&root, &s, "Granted").await < 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = max_offset(&root, &s, "Granted").await;
    assert_eq!(stored, 1, "alice's granted send");
    let other_stored = max_offset(&root, &s, "Other").await;
    let cases: Vec<(&str, RemotingClient, RemotingCommand, &str)> = vec![
        ("anonymous send", raw_client(), send_req("Granted", 0, body()), "no AccessKey"),
        ("wrong secret", client("alice", "not-her-secret"), send_req("Granted", 0, body()), "alice"),
        ("unknown user", client("mallory", "mallory-secret"), send_req("Granted", 0, body()), "mallory"),
        ("disabled user", client("sleeper", "sleeper-secret"), send_req("Granted", 0, body()), "disabled"),
        ("topic not granted", client("alice", "alice-secret"), send_req("Other", 0, body()), "Topic:Other"),
    ];
    for (what, c, req, mentions) in cases {
        denied(&call(&c, &s.broker(), req).await, what, mentions);
    }
    let no_sub = call(&client("pubonly", "pubonly-secret"), &s.broker(), pull_req("Granted", 0, 0, 0, "*")).await;
    denied(&no_sub, "pull without Sub", "pubonly");
    let anonymous_pull = call(&raw_client(), &s.broker(), pull_req("Granted", 0, 0, 0, "*")).await;
    denied(&anonymous_pull, "anonymous pull", "no AccessKey");
    // Anything wrongly stored would be in the consume queue by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(max_offset(&root, &s, "Granted").await, stored, "a refused send stored a message");
    assert_eq!(max_offset(&root, &s, "Other").await, other_stored, "a refused send stored a message");

    // Refusals are counted by reason, and no secret reaches a log or a read API.
    let list = ok(&root, &s.broker(), RemotingCommand::request(code::AUTH_LIST_USER)).await;
    let list = String::from_utf8_lossy(&list.body).to_string();
    assert!(list.contains("alice") && !list.contains("alice-secret"), "{list}");
    let config = ok(&root, &s.broker(), RemotingCommand::request(request::GET_BROKER_CONFIG)).await;
    assert!(!String::from_utf8_lossy(&config.body).contains(ROOT.1));
    let log = s.log_text();
    for secret in [ROOT.1, "alice-secret", "not-her-secret", "pubonly-secret"] {
        assert!(!log.contains(secret), "the log shows a secret");
    }
    assert!(log.contains("reason=\"bad_signature\"") || log.contains("refused_unlogged"), "refusals are logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_normal_users_cannot_reconfigure_delete_reset_or_hijack_a_route() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = secured(&dir);
    let root = client(ROOT.0, ROOT.1);
    create_topic(&root, &s, "Kept").await;
    user(&root, &s, "alice", "alice-secret", &[("Topic:Kept", &["Pub", "Sub"]), ("Group:cg", &["Sub"])]).await;
    ok(&root, &s.broker(), send_req("Kept", 0, b"one".to_vec())).await;
    let commit = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
        .with("consumerGroup", "cg")
        .with("topic", "Kept")
        .with("queueId", 0)
        .with("commitOffset", 1);
    ok(&root, &s.broker(), commit).await;
    let config_before = ok(&root, &s.broker(), RemotingCommand::request(request::GET_BROKER_CONFIG)).await.body;

    let alice = client("alice", "alice-secret");
    for (who, name) in [(&raw_client(), "AccessKey"), (&alice, "alice")] {
        let cfg = RemotingCommand::request(request::UPDATE_BROKER_CONFIG).with_body(&b"brokerPermission=2"[..]);
        denied(&call(who, &s.broker(), cfg).await, "config update", name);
        let del = RemotingCommand::request(request::DELETE_TOPIC_IN_BROKER).with("topic", "Kept");
        denied(&call(who, &s.broker(), del).await, "topic delete", name);
        let ns_del = RemotingCommand::request(request::DELETE_TOPIC_IN_NAMESRV).with("topic", "Kept");
        denied(&call(who, &s.namesrv(), ns_del).await, "route delete", name);
        let reset = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
            .with("consumerGroup", "other")
            .with("topic", "Kept")
            .with("queueId", 0)
            .with("commitOffset", 0);
        denied(&call(who, &s.broker(), reset).await, "offset reset", name);
        let mut wrapper = TopicConfigSerializeWrapper::default();
        wrapper.topic_config_table.insert("Kept".into(), TopicConfig::new("Kept", 8, perm::READ | perm::WRITE));
        let body = RegisterBrokerBody { topic_config_serialize_wrapper: wrapper, filter_server_list: Vec::new() };
        let hijack = RemotingCommand::request(request::REGISTER_BROKER)
            .with("brokerAddr", "127.0.0.1:1")
            .with("brokerName", "evil")
            .with("clusterName", "DefaultCluster")
            .with("brokerId", 0)
            .with("haServerAddr", "127.0.0.1:1")
            .with_body(serde_json::to_vec(&body).unwrap());
        denied(&call(who, &s.namesrv(), hijack).await, "REGISTER_BROKER", name);
        let drop_route = RemotingCommand::request(request::UNREGISTER_BROKER)
            .with("brokerAddr", s.broker())
            .with("brokerName", "broker-a")
            .with("clusterName", "DefaultCluster")
            .with("brokerId", 0);
        denied(&call(who, &s.namesrv(), drop_route).await, "UNREGISTER_BROKER", name);
    }
    // The VIP channel (listenPort - 2) runs the same gate.
    // Ours unless the broker said the port was taken (then another
    // process may be listening there).
    let vip = format!("127.0.0.1:{}", s.broker_port - 2);
    let vip_ours = !s.log_text().contains("VIP channel port");
    if vip_ours {
        let cfg = RemotingCommand::request(request::UPDATE_BROKER_CONFIG).with_body(&b"brokerPermission=2"[..]);
        denied(&call(&raw_client(), &vip, cfg).await, "config update on the VIP channel", "AccessKey");
        let send = call(&alice, &vip, send_req("Kept", 0, b"vip".to_vec())).await;
        assert_eq!(send.code, response::SUCCESS, "alice on the VIP channel: {:?}", send.remark);
    }
    let config_after = ok(&root, &s.broker(), RemotingCommand::request(request::GET_BROKER_CONFIG)).await.body;
    assert_eq!(config_before, config_after, "the broker's configuration changed");
    let route =
        ok(&root, &s.namesrv(), RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "Kept")).await;
    let route: TopicRouteData = json::decode(&route.body, "route").unwrap();
    let addrs: Vec<String> = route.broker_datas.iter().filter_map(|b| b.master_addr().map(str::to_string)).collect();
    let port = format!(":{}", s.broker_port);
    assert!(addrs.len() == 1 && addrs[0].ends_with(&port), "the route no longer points at the broker: {addrs:?}");
    let offset = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
        .with("consumerGroup", "cg")
        .with("topic", "Kept")
        .with("queueId", 0);
    assert_eq!(ok(&root, &s.broker(), offset).await.field("offset"), Some("1"));
    // The consume queue is written just after a send is answered: wait for it.
    let expected = if vip_ours { 2 } else { 1 };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while max_offset(&root, &s, "Kept").await < expected && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(max_offset(&root, &s, "Kept").await, expected, "the topic and its messages are still there");

    // Users and ACLs persist: after a restart alice still signs in and may send.
    s.terminate();
    s.restart();
    ok(&client("alice", "alice-secret"), &s.broker(), send_req("Kept", 0, b"two".to_vec())).await;

    // An operator's edit of auth.json is taken without a restart.
    let path = s.data_dir.join("config").join("auth.json");
    let mut tables: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    tables["users"]["alice"]["userStatus"] = serde_json::json!("disable");
    std::fs::write(&path, serde_json::to_vec(&tables).unwrap()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = call(&client("alice", "alice-secret"), &s.broker(), send_req("Kept", 0, b"three".to_vec())).await;
        if r.code == response::NO_PERMISSION {
            assert!(r.remark.unwrap_or_default().contains("disabled"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the edited auth.json was not taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends every request code in `codes` (empty headers, as a Super user) and
/// returns those the server handles (anything but REQUEST_CODE_NOT_SUPPORTED).
async fn handled_codes(c: &RemotingClient, addr: &str, codes: impl Iterator<Item = i32>) -> Vec<i32> {
    let mut handled = Vec::new();
    for code in codes {
        match c.invoke(addr, RemotingCommand::request(code), Duration::from_secs(3)).await {
            Ok(r) if r.code == response::REQUEST_CODE_NOT_SUPPORTED => {}
            _ => handled.push(code),
        }
    }
    handled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_code_a_server_handles_has_an_authorization_rule() {
    let dir = tempfile::tempdir().unwrap();
    let s = secured(&dir);
    let root = client(ROOT.0, ROOT.1);
    // RocketMQ's codes stay below 4000 but for 5.x's pop family (2000xx,
    // 2001xx); Spate's own are in the 900s.
    let all_codes = || (0..=4000).chain(200_000..=200_200);
    let broker = handled_codes(&root, &s.broker(), all_codes()).await;
    let missing: Vec<i32> = broker.iter().copied().filter(|c| broker_rule(*c).is_none()).collect();
    assert!(missing.is_empty(), "broker codes handled without an authorization rule: {missing:?}");
    assert!(broker.contains(&request::SEND_MESSAGE) && broker.contains(&code::AUTH_LIST_ACL), "{broker:?}");
    assert!(broker.contains(&request::POP_MESSAGE), "{broker:?}");
    let namesrv = handled_codes(&root, &s.namesrv(), all_codes()).await;
    let missing: Vec<i32> = namesrv.iter().copied().filter(|c| namesrv_rule(*c).is_none()).collect();
    assert!(missing.is_empty(), "name server codes handled without an authorization rule: {missing:?}");
    assert!(namesrv.contains(&request::REGISTER_BROKER), "{namesrv:?}");
    // And the other way round: a rule for a code nobody handles is a stale entry.
    for c in all_codes() {
        assert!(broker_rule(c).is_none() || broker.contains(&c), "broker rule for unhandled code {c}");
        assert!(namesrv_rule(c).is_none() || namesrv.contains(&c), "name server rule for unhandled code {c}");
    }
}

/// `spate admin` with credentials, as an operator types it.
fn admin(s: &Standalone, creds: Option<(&str, &str)>, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_spate"));
    cmd.args(["admin", "-n", &s.namesrv()]);
    if let Some((ak, sk)) = creds {
        cmd.args(["--access-key", ak, "--secret-key", sk]);
    }
    let out = cmd.args(args).env("RUST_BACKTRACE", "0").output().expect("spate admin runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_manages_users_and_acls_and_imports_a_1_0_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = secured(&dir);
    let root = Some(ROOT);
    let (done, out) = admin(&s, None, &["user", "list"]);
    assert!(!done && out.contains("code 16"), "anonymous user list: {out}");
    let (done, out) = admin(&s, root, &["user", "create", "carol", "--password", "carol-secret"]);
    assert!(done, "{out}");
    let (done, out) = admin(
        &s,
        root,
        &["acl", "create", "--subject", "User:carol", "--resources", "Topic:C,Group:cg", "--actions", "Pub,Sub"],
    );
    assert!(done, "{out}");
    let (done, out) = admin(&s, root, &["--json", "acl", "list"]);
    let acls: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(done && acls.as_array().is_some_and(|a| a.iter().any(|x| x["subject"] == "User:carol")), "{out}");
    let (_, out) = admin(&s, root, &["topic", "create", "C"]);
    assert!(out.contains("C"), "{out}");
    ok(&client("carol", "carol-secret"), &s.broker(), send_req("C", 0, b"carol".to_vec())).await;

    let yml = dir.path().join("plain_acl.yml");
    std::fs::write(
        &yml,
        "globalWhiteRemoteAddresses: ['10.0.0.*']\naccounts:\n  - accessKey: olduser\n    secretKey: old-secret-1\n    \
         admin: false\n    defaultTopicPerm: DENY\n    topicPerms: [C=PUB]\n  - accessKey: carol\n    secretKey: ignored-1\n",
    )
    .unwrap();
    let (done, out) = admin(&s, root, &["acl", "import", yml.to_str().unwrap()]);
    assert!(
        done && out.contains("olduser") && out.contains("carol") && out.contains("globalWhiteRemoteAddresses"),
        "{out}"
    );
    ok(&client("olduser", "old-secret-1"), &s.broker(), send_req("C", 0, b"old".to_vec())).await;
    let pull = call(&client("olduser", "old-secret-1"), &s.broker(), pull_req("C", 0, 0, 0, "*")).await;
    denied(&pull, "an imported PUB-only account pulling", "olduser");
    // carol existed already: her password was not replaced by the file's.
    ok(&client("carol", "carol-secret"), &s.broker(), send_req("C", 0, b"still".to_vec())).await;

    let (done, out) = admin(&s, root, &["--json", "user", "list"]);
    assert!(done && out.contains("olduser") && !out.contains("secret"), "{out}");
    let (done, out) = admin(&s, root, &["user", "update", "carol", "--status", "disable"]);
    assert!(done, "{out}");
    denied(
        &call(&client("carol", "carol-secret"), &s.broker(), send_req("C", 0, b"x".to_vec())).await,
        "disabled",
        "disabled",
    );
    let (done, out) = admin(&s, root, &["user", "delete", "olduser"]);
    assert!(done, "{out}");
    denied(
        &call(&client("olduser", "old-secret-1"), &s.broker(), send_req("C", 0, b"x".to_vec())).await,
        "deleted",
        "not found",
    );
}

fn tls_client(creds: Option<(&str, &str)>) -> RemotingClient {
    let mut c = ClientConfig::default();
    c.connection.credentials = creds.map(|(a, s)| Credentials::new(a, s));
    let settings = spate_remoting::TlsClientSettings { enable: true, ..Default::default() };
    c.tls = settings.client_tls().expect("TLS client settings");
    RemotingClient::new(c, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plaintext_share_a_port_when_permissive_and_plaintext_is_refused_when_enforcing() {
    let dir = tempfile::tempdir().unwrap();
    let init = format!(r#"initAuthenticationUser={{"username":"{}","password":"{}"}}"#, ROOT.0, ROOT.1);
    let s = Standalone::start_with(
        &dir.path().join("permissive"),
        &["tlsMode=permissive", "tls.test.mode.enable=true", "authenticationEnabled=true", init.as_str()],
    );
    let over_tls = tls_client(Some(ROOT));
    ok(&over_tls, &s.broker(), send_req("T", 0, b"over TLS".to_vec())).await;
    ok(&over_tls, &s.namesrv(), RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "TBW102"))
        .await;
    ok(&client(ROOT.0, ROOT.1), &s.broker(), send_req("T", 0, b"in plaintext".to_vec())).await;
    // TLS carries the same authentication: unsigned is refused over TLS too.
    denied(
        &call(&tls_client(None), &s.broker(), send_req("T", 0, b"x".to_vec())).await,
        "unsigned over TLS",
        "AccessKey",
    );
    drop(s);

    let s = Standalone::start_with(&dir.path().join("enforcing"), &["tlsMode=enforcing", "tls.test.mode.enable=true"]);
    ok(&tls_client(None), &s.broker(), send_req("T", 0, b"over TLS".to_vec())).await;
    ok(
        &tls_client(None),
        &s.namesrv(),
        RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "TBW102"),
    )
    .await;
    let plain = raw_client().invoke(&s.broker(), send_req("T", 0, b"plain".to_vec()), Duration::from_secs(3)).await;
    assert!(plain.is_err(), "plaintext was served in enforcing mode: {plain:?}");
    // Garbage and a truncated handshake close only their own connection.
    for junk in [&b"\x16\x03\x01\x00\xffgarbage"[..], &b"\x16\x03\x01"[..], &b"GET / HTTP/1.0\r\n\r\n"[..]] {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(s.broker()).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(junk).unwrap();
        let mut buf = [0u8; 64];
        let n = raw.read(&mut buf).unwrap_or(0);
        assert!(n == 0 || buf[0] == 0x15, "junk got an answer that is not a TLS alert or a close");
        ok(&tls_client(None), &s.broker(), send_req("T", 0, b"still served".to_vec())).await;
    }
    // The broker's own registration went over TLS (enforcing turns it on).
    let route = ok(
        &tls_client(None),
        &s.namesrv(),
        RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "TBW102"),
    )
    .await;
    assert!(!route.body.is_empty());
}
