//! The producer's circuit breaker with real processes: two broker groups
//! serve one topic; one of them hangs (SIGSTOP). New sends leave it within
//! a second and stop failing; when it wakes, a probe finds it answering
//! and traffic returns to it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{call, raw_client, send_req, BrokerProc, Proc};
use parking_lot::Mutex;
use spate_client::{ClientConfig, Message, Producer, ProducerOptions};
use spate_remoting::{request, response, RemotingCommand};

/// One send: when it was issued, and the broker that stored it (or none).
type Outcome = (Instant, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_is_left_within_a_second_and_used_again_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Proc::namesrv();
    let a = BrokerProc::start(dir.path(), "a", &ns.addr(), &["brokerName=broker-a".to_string()]);
    let b = BrokerProc::start(dir.path(), "b", &ns.addr(), &["brokerName=broker-b".to_string()]);
    let c = raw_client();
    for broker in [&a, &b] {
        let r = call(&c, &broker.addr(), send_req("Breaker", 0, b"create".to_vec())).await;
        assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    }
    // Both brokers in the topic's route.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let req = RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "Breaker");
        let r = call(&c, &ns.addr(), req).await;
        let body = String::from_utf8_lossy(&r.body);
        if body.contains("broker-a") && body.contains("broker-b") {
            break;
        }
        assert!(Instant::now() < deadline, "the route never listed both brokers: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let producer = Arc::new(
        Producer::start(
            ClientConfig::new(&ns.addr()).with_instance_name("breaker"),
            ProducerOptions::new("pg_breaker"),
        )
        .await
        .unwrap(),
    );
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(1000));
    let run = |until: Instant| {
        let (producer, outcomes, slots) = (producer.clone(), outcomes.clone(), slots.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while Instant::now() < until {
                tick.tick().await;
                let permit = slots.clone().acquire_owned().await.unwrap();
                let (producer, outcomes) = (producer.clone(), outcomes.clone());
                tokio::spawn(async move {
                    let issued = Instant::now();
                    let r = producer.send(Message::new("Breaker", "m")).await;
                    outcomes.lock().push((issued, r.ok().map(|r| r.message_queue.broker_name)));
                    drop(permit);
                });
            }
        }
    };

    // Both groups take traffic.
    run(Instant::now() + Duration::from_secs(1)).await;
    // broker-a hangs.
    a.pause(true);
    let hung = Instant::now();
    run(hung + Duration::from_secs(4)).await;
    // It wakes: within a probe interval or two, it takes traffic again.
    a.pause(false);
    let woke = Instant::now();
    run(woke + Duration::from_secs(6)).await;
    let _ = slots.acquire_many(1000).await;

    let all = outcomes.lock().clone();
    let before: Vec<&Outcome> = all.iter().filter(|(t, _)| *t < hung).collect();
    assert!(before.iter().any(|(_, b)| b.as_deref() == Some("broker-a")), "broker-a took traffic before the fault");
    // Sends issued from a second after the hang: none to broker-a, ~none failed.
    let settled: Vec<&Outcome> = all.iter().filter(|(t, _)| *t >= hung + Duration::from_secs(1) && *t < woke).collect();
    let failed = settled.iter().filter(|(_, b)| b.is_none()).count();
    let to_a = settled.iter().filter(|(_, b)| b.as_deref() == Some("broker-a")).count();
    assert!(settled.len() > 200, "{} sends in the settled window", settled.len());
    assert_eq!(to_a, 0, "sends still went to the hung broker a second after it hung");
    assert!(failed * 100 <= settled.len(), "{failed} of {} sends failed after the breaker tripped", settled.len());
    // Traffic returns once broker-a answers again.
    let back = all
        .iter()
        .filter(|(t, b)| *t >= woke && b.as_deref() == Some("broker-a"))
        .map(|(t, _)| *t - woke)
        .min()
        .expect("broker-a never took traffic again after it woke");
    assert!(back < Duration::from_secs(5), "traffic returned to broker-a only after {back:?}");
    let early_failed =
        all.iter().filter(|(t, b)| *t >= hung && *t < hung + Duration::from_secs(1) && b.is_none()).count();
    println!(
        "{{\"failed_in_first_second\":{early_failed},\"settled_sends\":{},\"settled_failed\":{failed},\"back_to_a_ms\":{}}}",
        settled.len(),
        back.as_millis()
    );
    producer.shutdown().await;
}
