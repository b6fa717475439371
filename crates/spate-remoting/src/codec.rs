//! Splits a byte stream into frames, enforcing the frame size limit before
//! buffering anything.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::command::RemotingCommand;
use crate::error::{BadHeader, FrameError};

/// Upstream's `com.rocketmq.remoting.frameMaxLength`: 16 MiB.
pub const DEFAULT_FRAME_MAX_LENGTH: usize = 16 * 1024 * 1024;

/// Most bytes reserved ahead of a partly received frame.
const RESERVE_AHEAD_MAX: usize = 64 * 1024;

/// Room for the next read: when the decoder needs more bytes and fewer
/// than `READ_ROOM_MIN` are free, it reserves `READ_ROOM`, so a frame of
/// up to 4 KiB arrives in one read. (Reading into whatever was left of
/// the buffer took every sixth 1 KiB request in two reads.) Done just
/// before the read, when the frames taken out are usually gone and the
/// buffer can be reused in place; 8 KiB is tokio-util's own first size.
const READ_ROOM_MIN: usize = 4 * 1024;
const READ_ROOM: usize = 8 * 1024;

/// Frame codec for `tokio_util::codec::Framed`. An item is a command, or
/// a whole frame whose header fields are out of range ([`BadHeader`]):
/// the stream stays in step after one, so the connection can answer it
/// and read on. A [`FrameError`] ends the stream.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    frame_max_length: usize,
}

impl FrameCodec {
    pub fn new(frame_max_length: usize) -> Self {
        FrameCodec { frame_max_length }
    }
}

impl Decoder for FrameCodec {
    type Item = Result<RemotingCommand, BadHeader>;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, FrameError> {
        if src.len() < 4 {
            if src.capacity() - src.len() < READ_ROOM_MIN {
                src.reserve(READ_ROOM);
            }
            return Ok(None);
        }
        let len = i32::from_be_bytes([src[0], src[1], src[2], src[3]]) as i64;
        if len < 4 {
            return Err(FrameError::Malformed(format!("frame length {len} is below the minimum of 4")));
        }
        if len as u64 > self.frame_max_length as u64 {
            return Err(FrameError::TooLarge { len, max: self.frame_max_length });
        }
        let len = len as usize;
        if src.len() < 4 + len {
            // Grow with the bytes that arrive, not with what a peer claims:
            // a 4-byte prefix must not make us allocate 16 MiB.
            src.reserve((4 + len - src.len()).min(RESERVE_AHEAD_MAX));
            return Ok(None);
        }
        src.advance(4);
        let frame = src.split_to(len).freeze();
        RemotingCommand::decode(frame).map(Some)
    }
}

impl Encoder<RemotingCommand> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, cmd: RemotingCommand, dst: &mut BytesMut) -> Result<(), FrameError> {
        cmd.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn split_frames_decode_one_by_one() {
        let mut codec = FrameCodec::new(DEFAULT_FRAME_MAX_LENGTH);
        let a = RemotingCommand::request(1).with("k", "v");
        let b = RemotingCommand::request(2).with_body(vec![7u8; 100]);
        let mut all = BytesMut::new();
        a.encode(&mut all);
        b.encode(&mut all);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in all.iter() {
            buf.put_u8(*byte);
            while let Some(cmd) = codec.decode(&mut buf).unwrap() {
                out.push(cmd.unwrap());
            }
        }
        assert_eq!(out, vec![a, b]);
    }

    #[test]
    fn the_next_read_has_room_for_a_whole_frame() {
        let mut codec = FrameCodec::new(DEFAULT_FRAME_MAX_LENGTH);
        let frame = RemotingCommand::request(1).with_body(vec![7u8; 1024]).to_bytes();
        // A buffer the frame fills almost to the end, as a read leaves it.
        let mut buf = BytesMut::with_capacity(frame.len() + 100);
        buf.put_slice(&frame);
        let taken = codec.decode(&mut buf).unwrap();
        assert!(taken.is_some());
        drop(taken);
        // Asked for more before the next read: room is made.
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() - buf.len() >= READ_ROOM_MIN, "room for {} bytes", buf.capacity() - buf.len());
        // A buffer with room to spare is left as it is (no allocation).
        let mut buf = BytesMut::with_capacity(frame.len() + 2 * READ_ROOM);
        buf.put_slice(&frame);
        assert!(codec.decode(&mut buf).unwrap().is_some());
        let room = buf.capacity();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.capacity(), room);
    }

    #[test]
    fn a_large_claim_does_not_reserve_the_whole_frame() {
        let mut codec = FrameCodec::new(DEFAULT_FRAME_MAX_LENGTH);
        let mut buf = BytesMut::from(&(16 * 1024 * 1024 - 16i32).to_be_bytes()[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= 2 * RESERVE_AHEAD_MAX, "reserved {}", buf.capacity());
    }

    #[test]
    fn oversized_and_negative_lengths_are_rejected_before_buffering() {
        let mut codec = FrameCodec::new(DEFAULT_FRAME_MAX_LENGTH);
        let mut buf = BytesMut::from(&(i32::MAX).to_be_bytes()[..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::TooLarge { .. })));
        let mut buf = BytesMut::from(&(-5i32).to_be_bytes()[..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::Malformed(_))));
    }
}
