//! Real TCP on loopback: correlation, one-way, server-initiated requests,
//! timeouts, and a bad frame closing only its own connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spate_remoting::{
    response, BoxFuture, ClientConfig, Connection, ConnectionConfig, RemotingClient, RemotingCommand, RemotingError,
    RemotingServer, RequestHandler, SerializeType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO: i32 = 1;
const SLOW: i32 = 2;
const CALL_BACK: i32 = 3;
const ONEWAY: i32 = 4;
const PANIC: i32 = 5;

struct Server {
    oneways: AtomicUsize,
}

impl RequestHandler for Server {
    fn handle(&self, conn: Arc<Connection>, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        let oneway = req.code == ONEWAY;
        if oneway {
            self.oneways.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async move {
            match req.code {
                ECHO => Some(
                    RemotingCommand::success(&req)
                        .with("echo", req.field("v").unwrap_or(""))
                        .with_body(req.body.clone()),
                ),
                SLOW => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Some(RemotingCommand::success(&req))
                }
                CALL_BACK => {
                    // Ask the client something before answering.
                    let asked = conn.invoke(RemotingCommand::request(99), Duration::from_secs(2)).await.ok()?;
                    Some(RemotingCommand::success(&req).with("client_said", asked.field("answer").unwrap_or("")))
                }
                ONEWAY => None,
                PANIC => panic!("handler bug"),
                _ => Some(RemotingCommand::error(&req, response::REQUEST_CODE_NOT_SUPPORTED, "unknown")),
            }
        })
    }
}

struct Client;

impl RequestHandler for Client {
    fn handle(&self, _conn: Arc<Connection>, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        Box::pin(async move { Some(RemotingCommand::success(&req).with("answer", "42")) })
    }
}

async fn start() -> (RemotingServer, Arc<Server>, String) {
    let handler = Arc::new(Server { oneways: AtomicUsize::new(0) });
    let server = RemotingServer::bind("127.0.0.1:0".parse().unwrap(), ConnectionConfig::default(), handler.clone())
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    (server, handler, addr)
}

#[tokio::test]
async fn a_client_set_to_the_binary_encoding_sends_its_requests_in_it() {
    let (_server, _h, addr) = start().await;
    let mut cfg = ClientConfig::default();
    cfg.connection.serialize_type = SerializeType::RocketMq;
    let client = RemotingClient::new(cfg, None);
    // Built as JSON (the default), sent as binary: the answer, which goes
    // in its request's encoding, says which one the server read.
    let req = RemotingCommand::request(ECHO).with("v", "caf\u{e9}\u{1}x");
    assert_eq!(req.serialize_type, SerializeType::Json);
    let resp = client.invoke(&addr, req, Duration::from_secs(3)).await.unwrap();
    assert_eq!(resp.serialize_type, SerializeType::RocketMq);
    assert_eq!(resp.field("echo"), Some("caf\u{e9}\u{1}x"));
    // A code the binary header cannot hold (16 bits) still goes, as JSON.
    let req = RemotingCommand::request(200_050);
    let resp = client.invoke(&addr, req, Duration::from_secs(3)).await.unwrap();
    assert_eq!((resp.code, resp.serialize_type), (response::REQUEST_CODE_NOT_SUPPORTED, SerializeType::Json));
}

#[tokio::test]
async fn requests_are_correlated_in_both_header_encodings() {
    let (_server, _h, addr) = start().await;
    let client = Arc::new(RemotingClient::new(ClientConfig::default(), None));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = RemotingCommand::request(ECHO).with("v", i).with_body(vec![i as u8; i]);
            if i % 2 == 0 {
                req.serialize_type = SerializeType::RocketMq;
            }
            let resp = client.invoke(&addr, req, Duration::from_secs(3)).await.unwrap();
            assert_eq!(resp.field("echo"), Some(i.to_string().as_str()));
            assert_eq!(resp.body.len(), i);
            // The answer uses the request's header encoding.
            let want = if i % 2 == 0 { SerializeType::RocketMq } else { SerializeType::Json };
            assert_eq!(resp.serialize_type, want);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Answers (and requests) are written straight to the socket by whoever
/// produced them when nothing is queued, and by the writer task otherwise;
/// a socket that takes only part of a frame leaves the rest to the writer.
/// Frames up to megabytes from many tasks at once, on both sides, must
/// still arrive whole and in one piece each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_directly_and_by_the_writer_never_interleave() {
    let (_server, _h, addr) = start().await;
    let client = Arc::new(RemotingClient::new(ClientConfig::default(), None));
    let mut tasks = Vec::new();
    for i in 0..48usize {
        let client = client.clone();
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            // Sizes from a few bytes to 3 MiB, far past a socket's buffer.
            let size = 1 + (i * 7_919 * 131) % (3 << 20);
            let body: Vec<u8> = (0..size).map(|j| (j * 31 + i) as u8).collect();
            let req = RemotingCommand::request(ECHO).with("v", i).with_body(body.clone());
            let resp = client.invoke(&addr, req, Duration::from_secs(30)).await.unwrap();
            assert_eq!(resp.field("echo"), Some(i.to_string().as_str()));
            assert!(resp.body[..] == body[..], "answer {i} ({size} bytes) came back altered");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn timeouts_oneway_and_server_initiated_requests() {
    let (_server, handler, addr) = start().await;
    let client = RemotingClient::new(ClientConfig::default(), Some(Arc::new(Client)));
    let err = client.invoke(&addr, RemotingCommand::request(SLOW), Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err, RemotingError::Timeout { .. }), "{err}");
    // The connection still works after a timed-out call.
    let resp = client.invoke(&addr, RemotingCommand::request(CALL_BACK), Duration::from_secs(3)).await.unwrap();
    assert_eq!(resp.field("client_said"), Some("42"));
    for _ in 0..10 {
        client.oneway(&addr, RemotingCommand::request(ONEWAY)).await.unwrap();
    }
    let resp = client.invoke(&addr, RemotingCommand::request(777), Duration::from_secs(3)).await.unwrap();
    assert_eq!(resp.code, response::REQUEST_CODE_NOT_SUPPORTED);
    // A panicking handler answers SYSTEM_ERROR and the connection lives on.
    let resp = client.invoke(&addr, RemotingCommand::request(PANIC), Duration::from_secs(3)).await.unwrap();
    assert_eq!(resp.code, response::SYSTEM_ERROR);
    assert!(resp.remark.unwrap_or_default().contains("request code 5"));
    assert_eq!(handler.oneways.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn a_bad_frame_closes_only_its_connection() {
    let (server, _h, addr) = start().await;
    let client = RemotingClient::new(ClientConfig::default(), None);
    client.invoke(&addr, RemotingCommand::request(ECHO), Duration::from_secs(3)).await.unwrap();
    for garbage in [
        (i32::MAX).to_be_bytes().to_vec(),          // claims 2 GiB
        vec![0, 0, 0, 8, 0, 0, 0, 200, 1, 2, 3, 4], // header longer than the frame
        vec![0, 0, 0, 6, 0, 0, 0, 2, b'{', b'x'],   // JSON header that does not parse
        vec![0, 0, 0, 0],                           // length below the minimum
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(&garbage).await.unwrap();
        let mut buf = [0u8; 16];
        let n =
            tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await.expect("server closes").unwrap_or(0);
        assert_eq!(n, 0, "server closed the bad connection without answering");
        let resp =
            client.invoke(&addr, RemotingCommand::request(ECHO).with("v", "ok"), Duration::from_secs(3)).await.unwrap();
        assert_eq!(resp.field("echo"), Some("ok"));
    }
    // Closing is asynchronous: give the server a moment to forget the bad ones.
    for _ in 0..200 {
        if server.connection_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.connection_count(), 1);
}

const PRIORITY: i32 = 6;

/// Answers with the name of the thread that ran the request.
struct Lanes {
    moved: Arc<AtomicUsize>,
}

impl RequestHandler for Lanes {
    fn handle(&self, conn: Arc<Connection>, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        Box::pin(async move {
            if req.code == CALL_BACK {
                let asked = conn.invoke(RemotingCommand::request(99), Duration::from_secs(2)).await.ok()?;
                return Some(RemotingCommand::success(&req).with("client_said", asked.field("answer").unwrap_or("")));
            }
            Some(RemotingCommand::success(&req).with("thread", thread).with("echo", req.field("v").unwrap_or("")))
        })
    }

    fn is_priority(&self, request: &RemotingCommand) -> bool {
        request.code == PRIORITY
    }

    fn on_priority_lane(&self, conn: &Arc<Connection>) {
        assert!(conn.is_on_priority_lane());
        self.moved.fetch_add(1, Ordering::SeqCst);
    }
}

/// A runtime on a thread of its own, as a broker's priority lane.
fn lane_thread() -> (tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("lane".into())
        .spawn(move || {
            runtime.block_on(async move {
                let _ = stopped.await;
            })
        })
        .unwrap();
    (handle, stop, thread)
}

async fn read_answers(s: &mut tokio::net::TcpStream, n: usize) -> Vec<RemotingCommand> {
    use tokio_util::codec::Decoder;
    let mut codec = spate_remoting::codec::FrameCodec::new(1 << 20);
    let mut buf = bytes::BytesMut::new();
    let mut got = Vec::new();
    while got.len() < n {
        while let Some(cmd) = codec.decode(&mut buf).unwrap() {
            got.push(cmd.expect("answers have good headers"));
        }
        if got.len() >= n {
            break;
        }
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf)).await.expect("answers in time");
        assert!(read.unwrap() > 0, "server closed the connection with {} of {n} answers read", got.len());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_to_the_priority_lane_with_what_it_had_buffered() {
    let (lane, stop, thread) = lane_thread();
    let cfg = ConnectionConfig { priority_lane: Some(lane), ..ConnectionConfig::default() };
    let moved = Arc::new(AtomicUsize::new(0));
    let server = RemotingServer::bind("127.0.0.1:0".parse().unwrap(), cfg, Arc::new(Lanes { moved: moved.clone() }))
        .await
        .unwrap();
    let addr = server.local_addr().to_string();

    // Before any priority request, requests run on the runtime the
    // connection started on.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    RemotingCommand::request(ECHO).with("v", "before").encode(&mut out);
    s.write_all(&out).await.unwrap();
    let before = read_answers(&mut s, 1).await;
    assert_eq!(before[0].field("echo"), Some("before"));
    assert_ne!(before[0].field("thread"), Some("lane"));

    // One write: the priority request that moves the connection, and
    // frames behind it that were read in the same go (a last one split
    // across two writes).
    let mut out = bytes::BytesMut::new();
    let mut opaques = Vec::new();
    for (i, code) in [PRIORITY, ECHO, PRIORITY, ECHO, ECHO, PRIORITY].into_iter().enumerate() {
        let mut req = RemotingCommand::request(code).with("v", i);
        req.opaque = 100 + i as i32;
        opaques.push((req.opaque, code, i));
        req.encode(&mut out);
    }
    let split = out.len() - 5;
    s.write_all(&out[..split]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&out[split..]).await.unwrap();
    let answers = read_answers(&mut s, opaques.len()).await;
    for (opaque, code, i) in opaques {
        let a = answers.iter().find(|a| a.opaque == opaque).expect("every request answered");
        assert_eq!(a.code, response::SUCCESS);
        assert_eq!(a.field("echo"), Some(i.to_string().as_str()));
        if code == PRIORITY {
            assert_eq!(a.field("thread"), Some("lane"), "priority request {i} ran on the lane");
        } else {
            assert_ne!(a.field("thread"), Some("lane"), "request {i} went back to the connection's home runtime");
        }
    }

    // Requests both ways still work on the moved connection.
    let client = RemotingClient::new(ClientConfig::default(), Some(Arc::new(Client)));
    let r = client.invoke(&addr, RemotingCommand::request(PRIORITY).with("v", "p"), Duration::from_secs(3)).await;
    assert_eq!(r.unwrap().field("thread"), Some("lane"));
    let resp = client.invoke(&addr, RemotingCommand::request(CALL_BACK), Duration::from_secs(3)).await.unwrap();
    assert_eq!(resp.field("client_said"), Some("42"));
    assert_eq!(server.connection_count(), 2);
    assert_eq!(moved.load(Ordering::SeqCst), 2, "each connection told once that it moved");

    // Closing the moved connections is seen by the server as before.
    drop(s);
    drop(client);
    for _ in 0..200 {
        if server.connection_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.connection_count(), 0);
    server.shutdown(Duration::from_secs(1)).await;
    let _ = stop.send(());
    thread.join().unwrap();
}

/// Answers every request with a 64 KiB body, set aside first (as a pull does).
struct BigAnswers {
    seen: parking_lot::Mutex<Option<Arc<Connection>>>,
}

const BIG_ANSWER: usize = 64 << 10;

impl RequestHandler for BigAnswers {
    fn handle(&self, conn: Arc<Connection>, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        self.seen.lock().get_or_insert_with(|| conn.clone());
        let conn2 = conn.clone();
        Box::pin(async move {
            let reserved = conn2.reserve_outbound(BIG_ANSWER + 1024).await.ok()?;
            // Handed to the answer, as a pull does: no gap for another
            // request to fill between the reservation and the answer.
            conn2.hold_until_answered(req.opaque, reserved);
            Some(RemotingCommand::success(&req).with_body(vec![1u8; BIG_ANSWER]))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_is_bounded_in_bytes_then_closed_after_the_write_timeout() {
    let handler = Arc::new(BigAnswers { seen: parking_lot::Mutex::new(None) });
    let high = 512 << 10;
    let cfg = ConnectionConfig {
        write_buffer_high_water_mark: high,
        write_buffer_low_water_mark: high / 2,
        write_timeout: Duration::from_millis(1500),
        ..ConnectionConfig::default()
    };
    let server = RemotingServer::bind("127.0.0.1:0".parse().unwrap(), cfg, handler.clone()).await.unwrap();
    let mut s = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    // 1,000 requests whose answers come to 64 MiB; never read.
    let mut requests = bytes::BytesMut::new();
    for i in 0..1000 {
        let mut r = RemotingCommand::request(ECHO);
        r.opaque = i;
        r.encode(&mut requests);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(&requests)).await;
    let conn = loop {
        if let Some(c) = handler.seen.lock().clone() {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut peak = 0;
    let started = std::time::Instant::now();
    while !conn.is_closed() && started.elapsed() < Duration::from_secs(5) {
        peak = peak.max(conn.outbound_bytes());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(peak > 0, "answers were queued");
    assert!(peak <= high + BIG_ANSWER + 1024, "{peak} bytes queued for a peer that does not read (high water {high})");
    assert!(conn.is_closed(), "a peer that did not read for the write timeout is still connected");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "closed only after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_silent_for_the_idle_timeout_is_closed_and_a_busy_one_is_not() {
    let handler = Arc::new(Server { oneways: AtomicUsize::new(0) });
    // Wide enough that a loaded machine's stall between two requests 100 ms
    // apart does not pass for idleness.
    let idle = Duration::from_millis(800);
    let cfg = ConnectionConfig { idle_timeout: idle, ..ConnectionConfig::default() };
    let server = RemotingServer::bind("127.0.0.1:0".parse().unwrap(), cfg, handler).await.unwrap();
    let mut busy = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let mut quiet = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    // One request on the quiet one (a connection is served from its first
    // byte on: admission has a timeout of its own), then nothing.
    let mut r = RemotingCommand::request(ECHO);
    r.opaque = 100;
    quiet.write_all(&r.to_bytes()).await.unwrap();
    assert_eq!(read_answers(&mut quiet, 1).await[0].opaque, 100);
    // A request every 100 ms for three idle timeouts: every one answered.
    let mut last_sent = None;
    for i in 0..24 {
        let mut r = RemotingCommand::request(ECHO);
        r.opaque = i;
        last_sent = Some(std::time::Instant::now());
        busy.write_all(&r.to_bytes()).await.unwrap();
        let answers = read_answers(&mut busy, 1).await;
        assert_eq!(answers[0].opaque, i, "the busy connection's request {i} was not answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The silent one was closed meanwhile: its read sees the end at once.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_millis(200), quiet.read(&mut buf))
        .await
        .expect("a connection silent for three idle timeouts is still open")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Once silent, the busy one goes too, one idle timeout after its last
    // request was read (which was after it was sent).
    let n = tokio::time::timeout(Duration::from_secs(3), busy.read(&mut buf))
        .await
        .expect("the busy connection, silent now, was never closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let after = last_sent.expect("requests were sent").elapsed();
    assert!(after >= idle && after < idle * 3, "closed {after:?} after its last request was sent");
}

#[tokio::test]
async fn an_idle_timeout_too_large_for_the_clock_means_never() {
    let handler = Arc::new(Server { oneways: AtomicUsize::new(0) });
    let cfg = ConnectionConfig { idle_timeout: Duration::MAX, ..ConnectionConfig::default() };
    let server = RemotingServer::bind("127.0.0.1:0".parse().unwrap(), cfg, handler).await.unwrap();
    let mut s = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    for i in 0..3 {
        let mut r = RemotingCommand::request(ECHO);
        r.opaque = i;
        s.write_all(&r.to_bytes()).await.unwrap();
        assert_eq!(read_answers(&mut s, 1).await[0].opaque, i);
    }
}
