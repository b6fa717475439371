//! Feeds arbitrary bytes to the frame codec; run with
//! `cargo +nightly fuzz run decode_frame` from crates/spate-remoting.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spate_remoting::codec::FrameCodec;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(1 << 20);
    let mut buf = BytesMut::from(data);
    // Decode until the codec wants more bytes or rejects the stream; a
    // decoded command must encode again without panicking.
    while let Ok(Some(decoded)) = codec.decode(&mut buf) {
        match decoded {
            Ok(cmd) => drop(cmd.to_bytes()),
            Err(bad) => drop(bad.answer().map(|a| a.to_bytes())),
        }
    }
});
