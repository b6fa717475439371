//! How a slave proves, on `haListenPort`, that it holds an enabled Super
//! user's secret without the secret crossing the wire. Pure: no I/O, no
//! clock; `master.rs` and `slave.rs` carry the frames.
//!
//! After the slave's `Hello`, a master with `authenticationEnabled` sends
//! `Challenge` with a fresh random nonce; the slave answers `Proof`: its
//! access key, a nonce of its own, and HMAC-SHA1 keyed by its secret over
//! the [`Transcript`]:
//!
//! ```text
//! LABEL || master nonce || slave nonce || u16 len || access key || Hello (as sent, length-prefixed)
//! ```
//!
//! - A captured proof is worthless on another connection: every connection
//!   gets a new master nonce (32 bytes from the OS), so the transcript the
//!   master checks is new too.
//! - The Hello it vouches for (group name, slave broker id, log end, epoch
//!   list, segment size, protocol version) cannot be altered in flight.
//! - [`LABEL`] names this use and its direction: no other HMAC made with the
//!   same secret (remoting request signatures, a future master-side proof)
//!   can stand in for it, so a proof cannot be reflected from elsewhere.
//! - The slave's own nonce keeps it from signing a transcript a rogue
//!   master chose in full.
//!
//! What it does not do: encrypt the stream, or stop a party that can make
//! a slave dial it from relaying the slave's handshake to the real master
//! (only a channel bound to the master's identity, such as TLS, does that).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use spate_auth::{AuthStore, UserStatus, UserType};

use super::protocol::{Nonce, NONCE_LEN, PROOF_LEN};

type HmacSha1 = Hmac<Sha1>;

/// Domain separation: what the HMAC is for, and who makes it.
pub const LABEL: &[u8] = b"spate/ha/slave-proof/v1\0";

/// Why a slave was refused on `haListenPort`. The text is the `Refuse`
/// reason the slave logs: it names the access key and what failed, never a
/// secret.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SlaveAuthFailure {
    #[error(
        "authentication failed: the slave sent no access key; set innerClientAuthenticationCredentials on it \
         to a Super user of this master"
    )]
    NoAccessKey,
    #[error("authentication failed: User:{0} is not found")]
    UnknownUser(String),
    #[error("authentication failed: check proof failed for AccessKey {0}")]
    BadProof(String),
    #[error("authentication failed: User:{0} is disabled")]
    DisabledUser(String),
    #[error("authentication failed: User:{0} is not a Super user; replication needs one")]
    NotSuper(String),
    #[error("authentication failed: no proof: {0}")]
    NoProof(String),
}

impl SlaveAuthFailure {
    /// The `reason` label of `spate_replication_auth_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SlaveAuthFailure::NoAccessKey => "no_access_key",
            SlaveAuthFailure::UnknownUser(_) => "unknown_user",
            SlaveAuthFailure::BadProof(_) => "bad_proof",
            SlaveAuthFailure::DisabledUser(_) => "disabled_user",
            SlaveAuthFailure::NotSuper(_) => "not_super",
            SlaveAuthFailure::NoProof(_) => "no_proof",
        }
    }
}

/// What a proof covers: one connection's handshake.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    pub master_nonce: &'a Nonce,
    pub slave_nonce: &'a Nonce,
    pub access_key: &'a str,
    /// The slave's `Hello` frame exactly as encoded on the wire.
    pub hello: &'a [u8],
}

impl Transcript<'_> {
    fn mac(&self, secret: &str) -> HmacSha1 {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <HmacSha1 as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
        mac.update(LABEL);
        mac.update(self.master_nonce);
        mac.update(self.slave_nonce);
        // The frame carries at most u16::MAX bytes of key: so does the transcript.
        let key = &self.access_key.as_bytes()[..self.access_key.len().min(u16::MAX as usize)];
        mac.update(&(key.len() as u16).to_be_bytes());
        mac.update(key);
        mac.update(self.hello);
        mac
    }
}

/// A fresh nonce from the operating system's generator.
pub fn nonce() -> Result<Nonce, rand::Error> {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.try_fill_bytes(&mut n)?;
    Ok(n)
}

/// The slave's proof over `t` with its secret.
pub fn prove(secret: &str, t: &Transcript<'_>) -> [u8; PROOF_LEN] {
    t.mac(secret).finalize().into_bytes().into()
}

/// Checks a slave's `proof` over `t` against the users: the access key must
/// name an enabled Super user whose secret made it. Returns the user name.
/// The comparison takes the same time wherever the bytes differ; whether a
/// user is disabled or Normal is told only to a peer that proved its secret.
pub fn verify(users: &AuthStore, t: &Transcript<'_>, proof: &[u8]) -> Result<String, SlaveAuthFailure> {
    if t.access_key.is_empty() {
        return Err(SlaveAuthFailure::NoAccessKey);
    }
    let who = printable(t.access_key);
    let secret = users.secret_of(t.access_key).ok_or_else(|| SlaveAuthFailure::UnknownUser(who.clone()))?;
    if secret.is_empty() || t.mac(&secret).verify_slice(proof).is_err() {
        return Err(SlaveAuthFailure::BadProof(who));
    }
    // Deleted between the two looks: as if it never was.
    let user = users.get_user(t.access_key).map_err(|_| SlaveAuthFailure::UnknownUser(who.clone()))?;
    if user.user_status == UserStatus::Disable {
        return Err(SlaveAuthFailure::DisabledUser(who));
    }
    if user.user_type != UserType::Super {
        return Err(SlaveAuthFailure::NotSuper(who));
    }
    Ok(user.username)
}

/// An access key as it may appear in a refusal or a log line.
pub fn printable(access_key: &str) -> String {
    access_key.chars().take(64).filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_auth::{Principal, UserUpdate};

    const HELLO: &[u8] = b"\x00\x00\x00\x05\x01hello";

    fn users() -> AuthStore {
        let users = AuthStore::new();
        users.init_super_user("rocketmq2", "12345678").unwrap();
        let root = Principal { username: "rocketmq2".into(), user_type: UserType::Super };
        users
            .create_user(&root, serde_json::from_str(r#"{"username":"normal","password":"normalsecret"}"#).unwrap())
            .unwrap();
        users
            .create_user(
                &root,
                serde_json::from_str(r#"{"username":"off","password":"offsecret","userType":"Super"}"#).unwrap(),
            )
            .unwrap();
        users
            .update_user(
                &root,
                UserUpdate { username: "off".into(), user_status: Some(UserStatus::Disable), ..Default::default() },
            )
            .unwrap();
        users
    }

    fn transcript<'a>(m: &'a Nonce, s: &'a Nonce, ak: &'a str) -> Transcript<'a> {
        Transcript { master_nonce: m, slave_nonce: s, access_key: ak, hello: HELLO }
    }

    #[test]
    fn the_right_secret_passes() {
        let (m, s) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let t = transcript(&m, &s, "rocketmq2");
        assert_eq!(verify(&users(), &t, &prove("12345678", &t)), Ok("rocketmq2".to_string()));
    }

    #[test]
    fn a_wrong_secret_fails() {
        let (m, s) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let t = transcript(&m, &s, "rocketmq2");
        assert_eq!(verify(&users(), &t, &prove("1234567", &t)), Err(SlaveAuthFailure::BadProof("rocketmq2".into())));
    }

    #[test]
    fn a_proof_for_another_connection_or_hello_fails() {
        let users = users();
        let (m, s) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let captured = prove("12345678", &transcript(&m, &s, "rocketmq2"));
        // Replayed to a new connection: the master's nonce is new.
        let other_m = [3; NONCE_LEN];
        let bad = Err(SlaveAuthFailure::BadProof("rocketmq2".into()));
        assert_eq!(verify(&users, &transcript(&other_m, &s, "rocketmq2"), &captured), bad);
        // The slave's nonce, the Hello and the access key are covered too.
        assert_eq!(verify(&users, &transcript(&m, &m, "rocketmq2"), &captured), bad);
        let other_hello = Transcript { hello: b"\x00\x00\x00\x05\x01hellp", ..transcript(&m, &s, "rocketmq2") };
        assert_eq!(verify(&users, &other_hello, &captured), bad);
        // Swapping the nonces (a proof reflected back) does not pass either.
        assert_eq!(verify(&users, &transcript(&s, &m, "rocketmq2"), &captured), bad);
        // A truncated or lengthened proof is a bad one, not a panic.
        assert_eq!(verify(&users, &transcript(&m, &s, "rocketmq2"), &captured[..19]), bad);
        assert_eq!(verify(&users, &transcript(&m, &s, "rocketmq2"), &[captured.as_slice(), &[0]].concat()), bad);
    }

    #[test]
    fn only_an_enabled_super_user_passes() {
        let users = users();
        let (m, s) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let t = transcript(&m, &s, "normal");
        assert_eq!(verify(&users, &t, &prove("normalsecret", &t)), Err(SlaveAuthFailure::NotSuper("normal".into())));
        let t = transcript(&m, &s, "off");
        assert_eq!(verify(&users, &t, &prove("offsecret", &t)), Err(SlaveAuthFailure::DisabledUser("off".into())));
        // Disabled or not is told only to who proved the secret.
        assert_eq!(verify(&users, &t, &prove("guess", &t)), Err(SlaveAuthFailure::BadProof("off".into())));
        let t = transcript(&m, &s, "nobody");
        assert_eq!(verify(&users, &t, &prove("x", &t)), Err(SlaveAuthFailure::UnknownUser("nobody".into())));
        let t = transcript(&m, &s, "");
        assert_eq!(verify(&users, &t, &[0; PROOF_LEN]), Err(SlaveAuthFailure::NoAccessKey));
    }

    #[test]
    fn refusals_never_carry_the_secret_and_say_authentication_failed() {
        let users = users();
        let (m, s) = ([1; NONCE_LEN], [2; NONCE_LEN]);
        let tries =
            [("rocketmq2", "wrong-S3CR3T"), ("normal", "normalsecret"), ("off", "offsecret"), ("x\n\u{7}y", "z")];
        for (ak, sk) in tries {
            let t = transcript(&m, &s, ak);
            let text = verify(&users, &t, &prove(sk, &t)).unwrap_err().to_string();
            assert!(text.starts_with("authentication failed: "), "{text}");
            assert!(!text.contains(sk) || sk == "z", "{text}");
            assert!(!text.contains("12345678"), "{text}");
            assert!(!text.contains('\n') && !text.contains('\u{7}'), "{text}");
        }
    }

    #[test]
    fn the_proof_is_hmac_sha1_over_the_documented_transcript() {
        // Computed by hand from the layout in the module docs.
        let (m, s) = ([0xa5; NONCE_LEN], [0x5a; NONCE_LEN]);
        let t = transcript(&m, &s, "ak");
        let mut msg = LABEL.to_vec();
        msg.extend_from_slice(&m);
        msg.extend_from_slice(&s);
        msg.extend_from_slice(&[0, 2, b'a', b'k']);
        msg.extend_from_slice(HELLO);
        let mut mac = <HmacSha1 as Mac>::new_from_slice(b"sk").unwrap();
        mac.update(&msg);
        assert_eq!(prove("sk", &t).as_slice(), mac.finalize().into_bytes().as_slice());
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
