//! Body compression as RocketMQ clients do it: zlib for bodies above
//! `compressMsgBodyOverHowmuch`, marked by the COMPRESSED system flag and,
//! since upstream 5.x, the compression type in bits 8-10 (zlib = 3; 4.x
//! clients leave them 0, which also means zlib).

use std::io::{Read, Write};

use bytes::Bytes;
use spate_common::message::SYSFLAG_COMPRESSED;

/// Bits 8-10 of the system flag: the compression type.
pub const COMPRESSION_TYPE_MASK: i32 = 0x7 << 8;
/// Upstream's ZLIB compression type.
pub const COMPRESSION_ZLIB: i32 = 0x3 << 8;
/// Largest body a compressed one may inflate to (guards against zip bombs).
pub const MAX_INFLATED_BYTES: u64 = 64 * 1024 * 1024;

/// Compresses `body` with zlib at `level` (upstream `compressLevel`, 5).
pub fn zlib(body: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::with_capacity(body.len() / 2), flate2::Compression::new(level));
    e.write_all(body)?;
    e.finish()
}

/// The system flag of a zlib-compressed body.
pub fn zlib_sys_flag(sys_flag: i32) -> i32 {
    (sys_flag & !COMPRESSION_TYPE_MASK) | SYSFLAG_COMPRESSED | COMPRESSION_ZLIB
}

/// Inflates a compressed body when it is zlib; returns the body and the
/// system flag without the compression bits. `None` when the body is not
/// compressed, uses another algorithm (LZ4, ZSTD), or does not inflate.
pub fn inflate(sys_flag: i32, body: &[u8]) -> Option<(Bytes, i32)> {
    if sys_flag & SYSFLAG_COMPRESSED == 0 {
        return None;
    }
    let kind = sys_flag & COMPRESSION_TYPE_MASK;
    if kind != 0 && kind != COMPRESSION_ZLIB {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3);
    let mut d = flate2::read::ZlibDecoder::new(body).take(MAX_INFLATED_BYTES + 1);
    d.read_to_end(&mut out).ok()?;
    if out.len() as u64 > MAX_INFLATED_BYTES {
        return None;
    }
    Some((Bytes::from(out), sys_flag & !(SYSFLAG_COMPRESSED | COMPRESSION_TYPE_MASK)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zlib_round_trips_with_4x_and_5x_flags() {
        let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let packed = zlib(&body, 5).unwrap();
        assert!(packed.len() < body.len());
        let flag = zlib_sys_flag(0x10);
        assert_eq!(flag, 0x10 | 0x1 | 0x300);
        let (back, rest) = inflate(flag, &packed).unwrap();
        assert_eq!(&back[..], &body[..]);
        assert_eq!(rest, 0x10);
        // 4.x clients: compressed bit only.
        assert_eq!(&inflate(SYSFLAG_COMPRESSED, &packed).unwrap().0[..], &body[..]);
        // Not compressed, other algorithms, garbage: left alone.
        assert!(inflate(0, &packed).is_none());
        assert!(inflate(SYSFLAG_COMPRESSED | 0x100, &packed).is_none());
        assert!(inflate(SYSFLAG_COMPRESSED, b"not zlib").is_none());
    }
}
