//! Sealing the auth tables for a slave: ChaCha20-Poly1305 under a key
//! derived from a Super user's secret, which master and slave both hold.
//! The passwords inside never cross the wire readable, TLS or not.
//!
//! Layout: `b"SPS1" | nonce (12) | ciphertext and tag`.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;

const MAGIC: &[u8; 4] = b"SPS1";
const NONCE_LEN: usize = 12;

/// 32 key bytes from the secret: two HMAC-SHA1 outputs under distinct labels.
fn key(secret: &str) -> Key {
    let mut out = [0u8; 40];
    for (i, label) in [b"spate auth seal 1", b"spate auth seal 2"].iter().enumerate() {
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
        mac.update(*label);
        out[i * 20..(i + 1) * 20].copy_from_slice(&mac.finalize().into_bytes());
    }
    *Key::from_slice(&out[..32])
}

pub(crate) fn seal(secret: &str, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = ChaCha20Poly1305::new(&key(secret));
    // Encryption only fails for inputs beyond 256 GiB.
    let sealed = cipher.encrypt(Nonce::from_slice(&nonce), plain).unwrap_or_default();
    let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

pub(crate) fn open(secret: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    let rest = sealed.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = rest.split_at(NONCE_LEN);
    ChaCha20Poly1305::new(&key(secret)).decrypt(Nonce::from_slice(nonce), body).ok()
}
