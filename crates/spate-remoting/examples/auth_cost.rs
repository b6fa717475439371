//! CPU cost of authentication per request, without the network: signing a
//! 1 KiB send on the client and the broker's whole gate (signature check,
//! policy lookup) for a Normal user with one policy. Numbers for
//! BENCHMARKS.md, hot caches: `cargo run --release -p spate-remoting --example auth_cost [ITERATIONS]`.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use spate_auth::{AuthStore, Credentials, Principal, UserType};
use spate_remoting::access::{self, AccessSettings, Gate};
use spate_remoting::signing::Signer;
use spate_remoting::RemotingCommand;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(200_000);
    let users = Arc::new(AuthStore::new());
    users.init_super_user("root", "rootsecret")?;
    let root = Principal { username: "root".into(), user_type: UserType::Super };
    users.create_user(&root, serde_json::from_str(r#"{"username":"bench","password":"bench-secret-1"}"#)?)?;
    users.put_acl(
        serde_json::from_str(
            r#"{"subject":"User:bench","policies":[{"entries":[{"resource":"Topic:SEC","actions":["Pub","Sub"]}]}]}"#,
        )?,
        true,
    )?;
    let settings = AccessSettings { authentication_enabled: true, authorization_enabled: true, ..Default::default() };
    let gate = Gate::new(settings, users, access::broker_rule, "DefaultCluster");

    // A SEND_MESSAGE_V2 header as the bench producer sends it.
    let mut send = RemotingCommand::request(spate_remoting::code::request::SEND_MESSAGE_V2);
    for (k, v) in [
        ("a", "PG"),
        ("b", "SEC"),
        ("c", "TBW102"),
        ("d", "4"),
        ("e", "1"),
        ("f", "0"),
        ("g", "1733400000000"),
        ("h", "0"),
        ("i", "UNIQ_KEY\u{1}AC1100000000\u{2}WAIT\u{1}true\u{2}"),
        ("j", "0"),
        ("k", "false"),
        ("m", "false"),
    ] {
        send = send.with(k, v);
    }
    let send = send.with_body(vec![b'x'; 1024]);
    let signer = Signer::new(&Credentials::new("bench", "bench-secret-1"));

    let clone_only = time(n, || drop(send.clone()));
    let mut signed = send.clone();
    let sign = time(n, || {
        signed = send.clone();
        signer.sign(&mut signed);
    });
    let source: IpAddr = "127.0.0.1".parse()?;
    let mut refused = 0u32;
    let check = time(n, || refused += u32::from(gate.check(&signed, source).is_err()));
    if refused > 0 {
        return Err(format!("{refused} checks refused a correctly signed request").into());
    }
    println!("{{\"iterations\":{n},\"sign_ns\":{},\"gate_check_ns\":{}}}", sign.saturating_sub(clone_only), check);
    Ok(())
}

/// Mean nanoseconds per call of `f` over `n` calls.
fn time(n: u32, mut f: impl FnMut()) -> u128 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_nanos() / u128::from(n.max(1))
}
