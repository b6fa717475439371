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
