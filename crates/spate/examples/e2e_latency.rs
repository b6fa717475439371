//! Measures what issue 3 promises with numbers, against a real `spate
//! standalone` process on loopback:
//! - start-up: from spawning the process until both ports accept (empty store);
//! - long polling: a pull is held, a message is sent to its queue, and we time
//!   the held pull's answer from the send's acknowledgement (and from the
//!   send's start);
//! - end to end with `spate-client`: a producer sends one message at a time
//!   and a push consumer's listener records when it arrives.
//!
//! `cargo build --release -p spate && cargo run --release -p spate --example e2e_latency -- --bin target/release/spate`

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use spate_remoting::{request, response, ClientConfig, RemotingClient, RemotingCommand};

struct Args {
    bin: String,
    starts: usize,
    polls: usize,
}

fn args() -> Result<Args> {
    let mut a = Args { bin: "target/release/spate".into(), starts: 20, polls: 2000 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--bin" => a.bin = v,
            "--starts" => a.starts = v.parse()?,
            "--polls" => a.polls = v.parse()?,
            _ => bail!("unknown flag {k}"),
        }
    }
    Ok(a)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &str, dir: &std::path::Path) -> Result<(Proc, u16, u16, Duration)> {
    let (np, bp) = (free_port()?, free_port()?);
    let t0 = Instant::now();
    let child = Command::new(bin)
        .args(["standalone", "--data-dir", &dir.display().to_string()])
        .args(["--namesrv-port", &np.to_string(), "--broker-port", &bp.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {bin}"))?;
    let p = Proc(child);
    for port in [np, bp] {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("port {port} never opened");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok((p, np, bp, t0.elapsed()))
}

fn report(name: &str, h: &Histogram<u64>) -> String {
    format!(
        "\"{name}\":{{\"count\":{},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

fn send(topic: &str) -> RemotingCommand {
    RemotingCommand::request(request::SEND_MESSAGE)
        .with("producerGroup", "bench")
        .with("topic", topic)
        .with("defaultTopic", "TBW102")
        .with("defaultTopicQueueNums", 1)
        .with("queueId", 0)
        .with("sysFlag", 0)
        .with("bornTimestamp", 0)
        .with("flag", 0)
        .with("properties", "")
        .with_body(vec![b'x'; 128])
}

fn pull(topic: &str, offset: i64) -> RemotingCommand {
    RemotingCommand::request(request::PULL_MESSAGE)
        .with("consumerGroup", "bench")
        .with("topic", topic)
        .with("queueId", 0)
        .with("queueOffset", offset)
        .with("maxMsgNums", 32)
        .with("sysFlag", 2)
        .with("suspendTimeoutMillis", 15_000)
        .with("subscription", "*")
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let a = args()?;
    let tmp = std::env::temp_dir().join(format!("spate-e2e-latency-{}", std::process::id()));
    let mut startup = Histogram::<u64>::new(3)?;
    for i in 0..a.starts {
        let dir = tmp.join(format!("start-{i}"));
        let (p, _, _, took) = start(&a.bin, &dir)?;
        startup.record(took.as_micros() as u64)?;
        // Each start pre-allocates and warms a commit-log segment; removing
        // it drops those pages instead of leaving the next start to compete
        // with their write-back.
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_p, _np, bp, _) = start(&a.bin, &tmp.join("poll"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (after_ack, after_send) = rt.block_on(async move {
        let client = Arc::new(RemotingClient::new(ClientConfig::default(), None));
        let addr = format!("127.0.0.1:{bp}");
        let t = Duration::from_secs(20);
        let r = client.invoke(&addr, send("LatencyProbe"), t).await?;
        anyhow::ensure!(r.code == response::SUCCESS, "first send failed: {:?}", r.remark);
        let mut after_ack = Histogram::<u64>::new(3)?;
        let mut after_send = Histogram::<u64>::new(3)?;
        for k in 1..=a.polls as i64 {
            let (c, addr2) = (client.clone(), addr.clone());
            let held = tokio::spawn(async move {
                let r = c.invoke(&addr2, pull("LatencyProbe", k), t).await;
                (r, Instant::now())
            });
            // Let the pull reach the broker and be held.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let t0 = Instant::now();
            let r = client.invoke(&addr, send("LatencyProbe"), t).await?;
            let acked = Instant::now();
            anyhow::ensure!(r.code == response::SUCCESS, "send failed: {:?}", r.remark);
            let (pulled, answered) = held.await?;
            let pulled = pulled?;
            anyhow::ensure!(pulled.code == response::SUCCESS, "pull {k} got code {}", pulled.code);
            after_ack.record(answered.saturating_duration_since(acked).as_micros() as u64)?;
            after_send.record(answered.duration_since(t0).as_micros() as u64)?;
        }
        Ok::<_, anyhow::Error>((after_ack, after_send))
    })?;
    let np = _np;
    let client_e2e = rt.block_on(client_end_to_end(np, a.polls))?;
    println!(
        "{{{},{},{},{}}}",
        report("startup_ready", &startup),
        report("long_poll_answer_after_send_ack", &after_ack),
        report("long_poll_answer_after_send_start", &after_send),
        report("client_send_start_to_listener", &client_e2e)
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Producer send start -> push consumer listener, one message in flight.
async fn client_end_to_end(namesrv_port: u16, n: usize) -> Result<Histogram<u64>> {
    use spate_client::{
        ClientConfig, ConsumeFromWhere, ConsumeStatus, Message, MessageListener, Producer, ProducerOptions,
        PushConsumer, PushConsumerOptions,
    };
    let ns = format!("127.0.0.1:{namesrv_port}");
    let producer =
        Producer::start(ClientConfig::new(&ns).with_instance_name("bench-p"), ProducerOptions::new("bench-p")).await?;
    // First send creates the topic.
    producer.send(Message::new("ClientProbe", "warm-up")).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(1024);
    let mut options = PushConsumerOptions::new("bench-c");
    options.consume_from_where = ConsumeFromWhere::LastOffset;
    let consumer = PushConsumer::new(ClientConfig::new(&ns).with_instance_name("bench-c"), options)?;
    consumer.subscribe("ClientProbe", "*")?;
    consumer
        .start(MessageListener::concurrently(move |msgs, _| {
            for _ in msgs {
                let _ = tx.try_send(Instant::now());
            }
            ConsumeStatus::ConsumeSuccess
        }))
        .await?;
    // Wait until the warm-up message (or any) arrives, so pulls are held.
    let _ = tokio::time::timeout(Duration::from_secs(15), rx.recv()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    while rx.try_recv().is_ok() {}
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..n {
        let t0 = Instant::now();
        producer.send(Message::new("ClientProbe", format!("m{i}"))).await?;
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.context("listener gone")?;
        let took = got.saturating_duration_since(t0);
        if took > Duration::from_millis(500) {
            eprintln!("slow delivery: message {i} took {took:?}");
        }
        h.record(took.as_micros() as u64)?;
    }
    consumer.shutdown().await;
    producer.shutdown().await;
    Ok(h)
}
