//! Routes heal and hold only what clients can use: each test shows one
//! finding of the route-hardening issue fixed, against the real binary.

mod common;

use std::time::{Duration, Instant};

use common::{call, raw_client, Standalone};
use spate_remoting::protocol::{
    json, perm, RegisterBrokerBody, TopicConfig, TopicConfigSerializeWrapper, TopicRouteData,
};
use spate_remoting::{request, response, RemotingClient, RemotingCommand};

/// Short, so healing "within one registration period" is quick to see.
const PERIOD_MS: u64 = 300;

fn route_req(topic: &str) -> RemotingCommand {
    RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", topic)
}

async fn route(c: &RemotingClient, namesrv: &str, topic: &str) -> Option<TopicRouteData> {
    let r = call(c, namesrv, route_req(topic)).await;
    (r.code == response::SUCCESS).then(|| json::decode::<TopicRouteData>(&r.body, "route").expect("route body"))
}

/// Polls `probe` until it holds; returns how long that took, or panics after `limit`.
async fn within(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if probe().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_topic(c: &RemotingClient, spate: &Standalone, topic: &str) {
    let create = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
        .with("topic", topic)
        .with("readQueueNums", 4)
        .with("writeQueueNums", 4)
        .with("perm", 6);
    assert_eq!(call(c, &spate.broker(), create).await.code, response::SUCCESS);
    within("the new topic's route", Duration::from_secs(5), async || route(c, &spate.namesrv(), topic).await.is_some())
        .await;
}

fn register_req(name: &str, cluster: &str, addr: &str, topics: Vec<TopicConfig>) -> RemotingCommand {
    let mut wrapper = TopicConfigSerializeWrapper::default();
    for tc in topics {
        wrapper.topic_config_table.insert(tc.topic_name.clone(), tc);
    }
    let body = RegisterBrokerBody { topic_config_serialize_wrapper: wrapper, filter_server_list: Vec::new() };
    RemotingCommand::request(request::REGISTER_BROKER)
        .with("brokerAddr", addr)
        .with("brokerName", name)
        .with("clusterName", cluster)
        .with("brokerId", 0)
        .with("haServerAddr", addr)
        .with_body(serde_json::to_vec(&body).expect("body encodes"))
}

fn short_period(dir: &tempfile::TempDir) -> Standalone {
    let period = format!("registerNameServerPeriod={PERIOD_MS}");
    Standalone::start_with(&dir.path().join("data"), &[period.as_str()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_on_the_name_server_is_routed_again_within_a_registration_period() {
    let dir = tempfile::tempdir().unwrap();
    let spate = short_period(&dir);
    let c = raw_client();
    create_topic(&c, &spate, "Healing").await;
    let del = RemotingCommand::request(request::DELETE_TOPIC_IN_NAMESRV).with("topic", "Healing");
    assert_eq!(call(&c, &spate.namesrv(), del).await.code, response::SUCCESS);
    // The broker still has the topic and its table's version is unchanged;
    // its next periodic registration must bring the route back.
    let took = within("the deleted route back", Duration::from_millis(4 * PERIOD_MS), async || {
        route(&c, &spate.namesrv(), "Healing").await.is_some()
    })
    .await;
    eprintln!("route back after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namesake_registration_that_disconnects_does_not_take_the_routes_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let spate = short_period(&dir);
    let c = raw_client();
    create_topic(&c, &spate, "Owned").await;
    let real = route(&c, &spate.namesrv(), "Owned").await.expect("routed");
    let real_master = real.broker_datas[0].master_addr().expect("a master").to_string();

    // Another connection claims the group (same brokerName and cluster,
    // another address) with no topics, then goes away.
    let fake = raw_client();
    let claim = register_req("broker-a", "DefaultCluster", "127.0.0.1:1", Vec::new());
    assert_eq!(call(&fake, &spate.namesrv(), claim).await.code, response::SUCCESS);
    fake.close_connection(&spate.namesrv());
    drop(fake);

    let took = within("the real master's route back", Duration::from_millis(4 * PERIOD_MS + 1000), async || {
        route(&c, &spate.namesrv(), "Owned")
            .await
            .is_some_and(|r| r.broker_datas.iter().any(|b| b.master_addr() == Some(real_master.as_str())))
    })
    .await;
    eprintln!("route back after {took:?}");
    // And it stays: the fake's close (however late it is noticed) does not undo it.
    tokio::time::sleep(Duration::from_millis(2 * PERIOD_MS)).await;
    let r = route(&c, &spate.namesrv(), "Owned").await.expect("still routed");
    assert_eq!(r.broker_datas[0].master_addr(), Some(real_master.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_topic_is_routed_and_a_deleted_one_unrouted_when_the_admin_call_answers() {
    let dir = tempfile::tempdir().unwrap();
    // The default period (5 s): the route must not wait for it.
    let spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    for i in 0..10 {
        let topic = format!("AtOnce{i}");
        let create = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
            .with("topic", &topic)
            .with("readQueueNums", 2)
            .with("writeQueueNums", 2)
            .with("perm", 6);
        assert_eq!(call(&c, &spate.broker(), create).await.code, response::SUCCESS);
        let r = route(&c, &spate.namesrv(), &topic).await;
        assert!(r.is_some_and(|r| r.queue_datas[0].write_queue_nums == 2), "{topic} routed when create answered");
        let delete = RemotingCommand::request(request::DELETE_TOPIC_IN_BROKER).with("topic", &topic);
        assert_eq!(call(&c, &spate.broker(), delete).await.code, response::SUCCESS);
        assert!(route(&c, &spate.namesrv(), &topic).await.is_none(), "{topic} unrouted when delete answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_permission_change_reaches_the_route_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // The default period (5 s): a change seen well before it was pushed, not polled.
    let spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    create_topic(&c, &spate, "Perms").await;
    let prompt = Duration::from_millis(2000);
    for (setting, expected) in [(perm::READ, perm::READ), (perm::READ | perm::WRITE, perm::READ | perm::WRITE)] {
        let update = RemotingCommand::request(request::UPDATE_BROKER_CONFIG)
            .with_body(format!("brokerPermission={setting}\n").into_bytes());
        assert_eq!(call(&c, &spate.broker(), update).await.code, response::SUCCESS);
        let took = within(&format!("route perm {expected}"), prompt, async || {
            route(&c, &spate.namesrv(), "Perms").await.is_some_and(|r| r.queue_datas[0].perm == expected)
        })
        .await;
        eprintln!("brokerPermission={setting} in the route after {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_counts_no_client_can_use_are_not_routed() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    let rogue = raw_client();
    let mut negative = TopicConfig::new("NegativeRead", 4, 6);
    negative.read_queue_nums = -5;
    let mut huge = TopicConfig::new("HugeWrite", 4, 6);
    huge.write_queue_nums = i32::MAX;
    let fine = TopicConfig::new("RogueFine", 4, 6);
    let reg = register_req("rogue", "DefaultCluster", "127.0.0.1:2", vec![negative, huge, fine]);
    let r = call(&rogue, &spate.namesrv(), reg).await;
    // The entries are skipped, the registration stands: a broker's valid
    // topics stay routable even when one of its entries is bad.
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let remark = r.remark.unwrap_or_default();
    assert!(remark.contains("readQueueNums -5") && remark.contains("writeQueueNums 2147483647"), "{remark}");
    for topic in ["NegativeRead", "HugeWrite"] {
        let r = call(&c, &spate.namesrv(), route_req(topic)).await;
        assert_eq!(
            r.code,
            response::TOPIC_NOT_EXIST,
            "{topic} was handed to clients: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let ok = route(&c, &spate.namesrv(), "RogueFine").await.expect("the valid entry is routed");
    assert_eq!((ok.queue_datas[0].read_queue_nums, ok.queue_datas[0].write_queue_nums), (4, 4));

    // A malformed identity is refused whole, naming the field.
    let r = call(&rogue, &spate.namesrv(), register_req("bad name", "DefaultCluster", "127.0.0.1:3", Vec::new())).await;
    assert_eq!(r.code, response::INVALID_PARAMETER);
    assert!(r.remark.as_deref().unwrap_or_default().contains("brokerName"), "{:?}", r.remark);
    let r = call(&rogue, &spate.namesrv(), register_req("b", "DefaultCluster", "nowhere", Vec::new())).await;
    assert_eq!(r.code, response::INVALID_PARAMETER);
    assert!(r.remark.as_deref().unwrap_or_default().contains("brokerAddr"), "{:?}", r.remark);
}
