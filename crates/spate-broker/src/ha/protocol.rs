//! The replication stream's frames (Spate's own; RocketMQ clients never see
//! it). Every frame is `length: u32` (of what follows), `kind: u8`, then
//! the kind's fields, all big-endian:
//!
//! | kind | direction | fields |
//! |---|---|---|
//! | 1 `Hello` | slave -> master | broker name, broker id, max offset, segment size, epoch list, version |
//! | 2 `Welcome` | master -> slave | start offset (truncate to it), master max offset, epoch list, version |
//! | 3 `Data` | master -> slave | offset, epoch, epoch start, master max offset, confirm offset, bytes |
//! | 4 `Heartbeat` | master -> slave | master max offset, confirm offset |
//! | 5 `Ack` | slave -> master | slave max offset |
//! | 6 `Refuse` | master -> slave | reason |
//! | 7 `Challenge` | master -> slave | master nonce (32 bytes) |
//! | 8 `Proof` | slave -> master | access key, slave nonce (32 bytes), HMAC-SHA1 (20 bytes) |
//!
//! Strings are `u16` length + UTF-8; an epoch list is `u32` count + (`u32`
//! epoch, `u64` start offset) each; `Data`'s bytes run to the frame's end;
//! nonces and the HMAC are fixed-size raw bytes.
//! Decoding is total: a short, oversized or unknown frame is an error,
//! never a panic. The `u32` version closing `Hello` and `Welcome` is
//! [`PROTOCOL_VERSION`] (absent, from a build before it: 0); each side
//! refuses a peer speaking another version before any log byte moves.
//!
//! The handshake: `Hello`; then, only when the master has
//! `authenticationEnabled`, `Challenge` and the slave's `Proof`
//! (`slave_auth.rs`); then `Welcome` or `Refuse`. A slave takes whichever
//! of `Challenge` / `Welcome` / `Refuse` comes, so one holding credentials
//! follows a master without authentication unchanged.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use spate_store::EpochEntry;

/// The stream's layout version (2: `confirm` in `Data` and `Heartbeat`;
/// 3: `Challenge` and `Proof`, slaves authenticate).
pub const PROTOCOL_VERSION: u32 = 3;

/// Bytes of a handshake nonce (`Challenge`'s and `Proof`'s).
pub const NONCE_LEN: usize = 32;

/// Bytes of a `Proof`'s HMAC-SHA1.
pub const PROOF_LEN: usize = 20;

/// A handshake nonce: fresh random bytes, one per connection and side.
pub type Nonce = [u8; NONCE_LEN];

/// Largest frame accepted (a `Data` batch is `haTransferBatchSize`, far below).
pub const MAX_FRAME: usize = 64 << 20;

/// Most epochs in one list (an epoch begins at each master change).
pub const MAX_EPOCHS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        broker_name: String,
        broker_id: i64,
        max_offset: u64,
        segment_size: u64,
        epochs: Vec<EpochEntry>,
        version: u32,
    },
    Welcome {
        start_offset: u64,
        master_max: u64,
        epochs: Vec<EpochEntry>,
        version: u32,
    },
    /// `confirm`: the master's confirm offset under the controller (what
    /// its whole in-sync set holds; `u64::MAX` when it has none), so a
    /// slave serves reads only below it too.
    Data {
        offset: u64,
        epoch: u32,
        epoch_start: u64,
        master_max: u64,
        confirm: u64,
        bytes: Bytes,
    },
    Heartbeat {
        master_max: u64,
        confirm: u64,
    },
    Ack {
        max_offset: u64,
    },
    Refuse {
        reason: String,
    },
    /// The master's fresh nonce: prove you hold a Super user's secret.
    Challenge {
        nonce: Nonce,
    },
    /// The slave's answer: who it is, its own nonce, and the HMAC-SHA1
    /// `slave_auth::prove` computes over the handshake.
    Proof {
        access_key: String,
        nonce: Nonce,
        mac: [u8; PROOF_LEN],
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("replication frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("replication frame truncated: {0}")]
    Short(&'static str),
    #[error("unknown replication frame kind {0}")]
    UnknownKind(u8),
    #[error("replication frame field {0} is invalid")]
    Invalid(&'static str),
}

impl Frame {
    /// Appends the whole frame (length prefix included) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let at = out.len();
        out.put_u32(0);
        match self {
            Frame::Hello { broker_name, broker_id, max_offset, segment_size, epochs, version } => {
                out.put_u8(1);
                put_str(out, broker_name);
                out.put_i64(*broker_id);
                out.put_u64(*max_offset);
                out.put_u64(*segment_size);
                put_epochs(out, epochs);
                out.put_u32(*version);
            }
            Frame::Welcome { start_offset, master_max, epochs, version } => {
                out.put_u8(2);
                out.put_u64(*start_offset);
                out.put_u64(*master_max);
                put_epochs(out, epochs);
                out.put_u32(*version);
            }
            Frame::Data { offset, epoch, epoch_start, master_max, confirm, bytes } => {
                out.put_u8(3);
                out.put_u64(*offset);
                out.put_u32(*epoch);
                out.put_u64(*epoch_start);
                out.put_u64(*master_max);
                out.put_u64(*confirm);
                out.put_slice(bytes);
            }
            Frame::Heartbeat { master_max, confirm } => {
                out.put_u8(4);
                out.put_u64(*master_max);
                out.put_u64(*confirm);
            }
            Frame::Ack { max_offset } => {
                out.put_u8(5);
                out.put_u64(*max_offset);
            }
            Frame::Refuse { reason } => {
                out.put_u8(6);
                put_str(out, reason);
            }
            Frame::Challenge { nonce } => {
                out.put_u8(7);
                out.put_slice(nonce);
            }
            Frame::Proof { access_key, nonce, mac } => {
                out.put_u8(8);
                put_str(out, access_key);
                out.put_slice(nonce);
                out.put_slice(mac);
            }
        }
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The frame's kind, for messages (a frame's fields may be large).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Welcome { .. } => "Welcome",
            Frame::Data { .. } => "Data",
            Frame::Heartbeat { .. } => "Heartbeat",
            Frame::Ack { .. } => "Ack",
            Frame::Refuse { .. } => "Refuse",
            Frame::Challenge { .. } => "Challenge",
            Frame::Proof { .. } => "Proof",
        }
    }

    /// The whole frame as sent on the wire (what a `Proof` signs of the `Hello`).
    pub fn encoded(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Takes one whole frame off the front of `buf`: `Ok(None)` while it
    /// is incomplete (nothing is consumed then).
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        Frame::decode_within(buf, MAX_FRAME)
    }

    /// [`decode`](Self::decode) refusing frames over `max` bytes. Room is
    /// made as bytes arrive, not for the length a header claims.
    pub fn decode_within(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > max.min(MAX_FRAME) {
            return Err(FrameError::TooLarge(len));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        buf.advance(4);
        let mut body = buf.split_to(len).freeze();
        if body.is_empty() {
            return Err(FrameError::Short("kind"));
        }
        let kind = body.get_u8();
        let frame = match kind {
            1 => Frame::Hello {
                broker_name: get_str(&mut body)?,
                broker_id: get_i64(&mut body, "broker id")?,
                max_offset: get_u64(&mut body, "max offset")?,
                segment_size: get_u64(&mut body, "segment size")?,
                epochs: get_epochs(&mut body)?,
                version: get_version(&mut body)?,
            },
            2 => Frame::Welcome {
                start_offset: get_u64(&mut body, "start offset")?,
                master_max: get_u64(&mut body, "master max")?,
                epochs: get_epochs(&mut body)?,
                version: get_version(&mut body)?,
            },
            3 => Frame::Data {
                offset: get_u64(&mut body, "offset")?,
                epoch: get_u32(&mut body, "epoch")?,
                epoch_start: get_u64(&mut body, "epoch start")?,
                master_max: get_u64(&mut body, "master max")?,
                confirm: get_u64(&mut body, "confirm offset")?,
                bytes: std::mem::take(&mut body),
            },
            4 => Frame::Heartbeat {
                master_max: get_u64(&mut body, "master max")?,
                confirm: get_u64(&mut body, "confirm offset")?,
            },
            5 => Frame::Ack { max_offset: get_u64(&mut body, "max offset")? },
            6 => Frame::Refuse { reason: get_str(&mut body)? },
            7 => Frame::Challenge { nonce: get_array(&mut body, "nonce")? },
            8 => Frame::Proof {
                access_key: get_str(&mut body)?,
                nonce: get_array(&mut body, "nonce")?,
                mac: get_array(&mut body, "proof")?,
            },
            k => return Err(FrameError::UnknownKind(k)),
        };
        if !body.is_empty() {
            return Err(FrameError::Invalid("trailing bytes"));
        }
        Ok(Some(frame))
    }
}

/// Reads the next frame, waiting at most `timeout` for it (a silent peer
/// is a dead one). `Ok(None)`: the peer closed the connection.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    timeout: std::time::Duration,
) -> Result<Option<Frame>, super::HaError> {
    read_frame_within(r, buf, timeout, MAX_FRAME).await
}

/// [`read_frame`] refusing frames over `max` bytes.
pub async fn read_frame_within<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    timeout: std::time::Duration,
    max: usize,
) -> Result<Option<Frame>, super::HaError> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(f) = Frame::decode_within(buf, max)? {
            return Ok(Some(f));
        }
        buf.reserve(64 << 10);
        match tokio::time::timeout_at(deadline, r.read_buf(buf)).await {
            Err(_) => return Err(super::HaError::Silent(timeout)),
            Ok(Ok(0)) if buf.is_empty() => return Ok(None),
            Ok(Ok(0)) => return Err(FrameError::Short("connection closed mid-frame").into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Writes one frame, giving up after `timeout` (a peer that stopped reading).
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
    timeout: std::time::Duration,
) -> Result<(), super::HaError> {
    use tokio::io::AsyncWriteExt;
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    match tokio::time::timeout(timeout, w.write_all(&out)).await {
        Err(_) => Err(super::HaError::Silent(timeout)),
        Ok(r) => Ok(r?),
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn put_epochs(out: &mut BytesMut, epochs: &[EpochEntry]) {
    let n = epochs.len().min(MAX_EPOCHS);
    out.put_u32(n as u32);
    for e in &epochs[epochs.len() - n..] {
        out.put_u32(e.epoch);
        out.put_u64(e.start_offset);
    }
}

/// The closing version of `Hello` / `Welcome`: 0 when a peer from before
/// versions sent none.
fn get_version(body: &mut Bytes) -> Result<u32, FrameError> {
    if body.is_empty() {
        return Ok(0);
    }
    get_u32(body, "version")
}

fn get_u32(b: &mut Bytes, what: &'static str) -> Result<u32, FrameError> {
    if b.remaining() < 4 {
        return Err(FrameError::Short(what));
    }
    Ok(b.get_u32())
}

fn get_u64(b: &mut Bytes, what: &'static str) -> Result<u64, FrameError> {
    if b.remaining() < 8 {
        return Err(FrameError::Short(what));
    }
    Ok(b.get_u64())
}

fn get_array<const N: usize>(b: &mut Bytes, what: &'static str) -> Result<[u8; N], FrameError> {
    if b.remaining() < N {
        return Err(FrameError::Short(what));
    }
    let mut out = [0u8; N];
    b.copy_to_slice(&mut out);
    Ok(out)
}

fn get_i64(b: &mut Bytes, what: &'static str) -> Result<i64, FrameError> {
    get_u64(b, what).map(|v| v as i64)
}

fn get_str(b: &mut Bytes) -> Result<String, FrameError> {
    if b.remaining() < 2 {
        return Err(FrameError::Short("string length"));
    }
    let n = b.get_u16() as usize;
    if b.remaining() < n {
        return Err(FrameError::Short("string"));
    }
    String::from_utf8(b.split_to(n).to_vec()).map_err(|_| FrameError::Invalid("string is not UTF-8"))
}

fn get_epochs(b: &mut Bytes) -> Result<Vec<EpochEntry>, FrameError> {
    let n = get_u32(b, "epoch count")? as usize;
    if n > MAX_EPOCHS || b.remaining() < n * 12 {
        return Err(FrameError::Invalid("epoch count"));
    }
    Ok((0..n).map(|_| EpochEntry { epoch: b.get_u32(), start_offset: b.get_u64() }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(f: Frame) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        f.encode(&mut buf);
        let whole = buf.len();
        // Every prefix short of a whole frame is "incomplete", not an error.
        for cut in 0..whole / 2 {
            let mut part = BytesMut::from(&buf[..cut]);
            assert_eq!(Frame::decode(&mut part), Ok(None), "cut at {cut}");
        }
        assert_eq!(Frame::decode(&mut buf).unwrap(), Some(f.clone()));
        assert_eq!(Frame::decode(&mut buf).unwrap(), Some(f));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_hello_from_before_versions_reads_as_version_0() {
        let mut buf = BytesMut::new();
        Frame::Hello {
            broker_name: "b".into(),
            broker_id: 1,
            max_offset: 0,
            segment_size: 1 << 30,
            epochs: vec![],
            version: PROTOCOL_VERSION,
        }
        .encode(&mut buf);
        // Drop the trailing version and fix the length, as an old build sends it.
        buf.truncate(buf.len() - 4);
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(Frame::decode(&mut buf).unwrap(), Some(Frame::Hello { version: 0, .. })));
    }

    #[test]
    fn every_kind_round_trips() {
        let epochs = vec![EpochEntry { epoch: 1, start_offset: 0 }, EpochEntry { epoch: 3, start_offset: 4096 }];
        roundtrip(Frame::Hello {
            broker_name: "broker-a".into(),
            broker_id: 2,
            max_offset: 77,
            segment_size: 1 << 30,
            epochs: epochs.clone(),
            version: PROTOCOL_VERSION,
        });
        roundtrip(Frame::Welcome { start_offset: 10, master_max: 20, epochs, version: PROTOCOL_VERSION });
        roundtrip(Frame::Data {
            offset: 1 << 40,
            epoch: 9,
            epoch_start: 1 << 39,
            master_max: u64::MAX,
            confirm: 1 << 39,
            bytes: Bytes::from_static(b"records"),
        });
        roundtrip(Frame::Heartbeat { master_max: 5, confirm: u64::MAX });
        roundtrip(Frame::Ack { max_offset: 6 });
        roundtrip(Frame::Refuse { reason: "not a master".into() });
        roundtrip(Frame::Challenge { nonce: [7; NONCE_LEN] });
        roundtrip(Frame::Proof { access_key: "rocketmq2".into(), nonce: [1; NONCE_LEN], mac: [9; PROOF_LEN] });
        roundtrip(Frame::Proof { access_key: String::new(), nonce: [0; NONCE_LEN], mac: [0; PROOF_LEN] });
    }

    #[test]
    fn challenge_and_proof_are_laid_out_as_documented() {
        let mut nonce = [0u8; NONCE_LEN];
        nonce.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let c = Frame::Challenge { nonce }.encoded();
        assert_eq!(&c[..4], &(1 + NONCE_LEN as u32).to_be_bytes());
        assert_eq!(c[4], 7);
        assert_eq!(&c[5..], &nonce[..]);

        let p = Frame::Proof { access_key: "ak".into(), nonce, mac: [0xaa; PROOF_LEN] }.encoded();
        assert_eq!(p.len(), 4 + 1 + 2 + 2 + NONCE_LEN + PROOF_LEN);
        assert_eq!(&p[4..9], &[8, 0, 2, b'a', b'k']);
        assert_eq!(&p[9..9 + NONCE_LEN], &nonce[..]);
        assert_eq!(&p[9 + NONCE_LEN..], &[0xaa; PROOF_LEN][..]);
    }

    #[test]
    fn a_short_challenge_or_proof_is_an_error() {
        let mut b = BytesMut::from(&[0u8, 0, 0, 5, 7, 1, 2, 3, 4][..]);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::Short("nonce")));
        let mut whole = BytesMut::new();
        Frame::Proof { access_key: "ak".into(), nonce: [1; NONCE_LEN], mac: [2; PROOF_LEN] }.encode(&mut whole);
        // Drop the HMAC's last byte and fix the length.
        whole.truncate(whole.len() - 1);
        let len = (whole.len() - 4) as u32;
        whole[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(Frame::decode(&mut whole), Err(FrameError::Short("proof")));
        // One byte too many is not a longer HMAC.
        let mut long = BytesMut::new();
        Frame::Challenge { nonce: [3; NONCE_LEN] }.encode(&mut long);
        long[3] += 1;
        long.put_u8(0);
        assert_eq!(Frame::decode(&mut long), Err(FrameError::Invalid("trailing bytes")));
    }

    #[test]
    fn a_decoded_hello_encodes_to_the_bytes_received() {
        // The master checks a proof over the Hello as it re-encodes it:
        // that must be the slave's bytes exactly.
        let hello = Frame::Hello {
            broker_name: "broker-\u{e9}".into(),
            broker_id: -3,
            max_offset: u64::MAX,
            segment_size: 1 << 30,
            epochs: vec![EpochEntry { epoch: 2, start_offset: 5 }],
            version: PROTOCOL_VERSION,
        };
        let sent = hello.encoded();
        let mut buf = BytesMut::from(&sent[..]);
        let got = Frame::decode(&mut buf).unwrap().unwrap();
        assert_eq!(got.encoded(), sent);
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut b = BytesMut::from(&[0u8, 0, 0, 1, 99][..]);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::UnknownKind(99)));
        let mut b = BytesMut::from(&[0u8, 0, 0, 3, 5, 1, 2][..]);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::Short("max offset")));
        let mut b = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(Frame::decode(&mut b), Err(FrameError::TooLarge(_))));
        let mut b = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::Short("kind")));
        // A header claiming more than the caller allows is refused at once,
        // before any room is made for it.
        let mut b = BytesMut::from(&[0u8, 0x10, 0, 0][..]);
        assert_eq!(Frame::decode_within(&mut b, 4096), Err(FrameError::TooLarge(0x10_0000)));
        assert!(b.capacity() < 4096);
        let mut b = BytesMut::new();
        Frame::Ack { max_offset: 1 }.encode(&mut b);
        b[3] += 1;
        b.put_u8(0);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::Invalid("trailing bytes")));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut b = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = Frame::decode(&mut b) {}
        }
    }
}
