//! The demo record format, fixed so that anyone can check a recording
//! (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | `u32 magic = 0x31594C52` (the bytes "RLY1") |
//! | 4..8 | `u32 len`: the whole record, header included, at least 24 |
//! | 8..12 | `u32 writer`: writer thread index |
//! | 12..16 | `u32 cpu`: CPU it ran on (informational) |
//! | 16..24 | `u64 seq`: per writer, from 0 |
//! | 24..len | payload: byte `i` is `(seq·31 + writer·17 + i) mod 256` |
//!
//! (`i` counts from the start of the record, so the first payload byte has
//! `i = 24`.)

/// "RLY1" read as a little-endian u32.
pub const MAGIC: u32 = 0x3159_4C52;
/// Header length.
pub const HEADER: usize = 24;

/// Payload byte `i` of record `seq` of `writer`.
#[inline]
pub fn payload_byte(seq: u64, writer: u32, i: usize) -> u8 {
    (seq.wrapping_mul(31)
        .wrapping_add(writer as u64 * 17)
        .wrapping_add(i as u64)
        & 0xff) as u8
}

/// Fills `out` (its length is the record length, ≥ 24) with a demo record.
pub fn encode(out: &mut [u8], writer: u32, cpu: u32, seq: u64) {
    let len = out.len();
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    out[8..12].copy_from_slice(&writer.to_le_bytes());
    out[12..16].copy_from_slice(&cpu.to_le_bytes());
    out[16..24].copy_from_slice(&seq.to_le_bytes());
    let base = (seq.wrapping_mul(31).wrapping_add(writer as u64 * 17) & 0xff) as u8;
    for (i, b) in out.iter_mut().enumerate().skip(HEADER) {
        *b = base.wrapping_add(i as u8);
    }
}

/// A record's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Record length.
    pub len: u32,
    /// Writer index.
    pub writer: u32,
    /// CPU.
    pub cpu: u32,
    /// Sequence number.
    pub seq: u64,
}

/// What is wrong with the bytes at some offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defect {
    /// Fewer bytes left than a header, or than the record's length.
    Truncated { need: usize, have: usize },
    /// Wrong magic.
    Magic(u32),
    /// Length below the header size.
    Length(u32),
    /// Payload byte `at` (offset in the record) differs.
    Payload { at: usize, got: u8, want: u8 },
}

impl std::fmt::Display for Defect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Defect::Truncated { need, have } => {
                write!(f, "truncated record: needs {need} bytes, {have} left")
            }
            Defect::Magic(m) => write!(f, "bad magic {m:#010x}"),
            Defect::Length(l) => write!(f, "bad record length {l}"),
            Defect::Payload { at, got, want } => {
                write!(
                    f,
                    "corrupt payload byte {at}: {got:#04x}, expected {want:#04x}"
                )
            }
        }
    }
}

/// Parses and checks the record at the start of `buf`.
pub fn check(buf: &[u8]) -> Result<Header, (Option<Header>, Defect)> {
    if buf.len() < HEADER {
        return Err((
            None,
            Defect::Truncated {
                need: HEADER,
                have: buf.len(),
            },
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let magic = u32_at(0);
    if magic != MAGIC {
        return Err((None, Defect::Magic(magic)));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[16..24]);
    let h = Header {
        len: u32_at(4),
        writer: u32_at(8),
        cpu: u32_at(12),
        seq: u64::from_le_bytes(seq),
    };
    if (h.len as usize) < HEADER {
        return Err((Some(h), Defect::Length(h.len)));
    }
    if h.len as usize > buf.len() {
        return Err((
            Some(h),
            Defect::Truncated {
                need: h.len as usize,
                have: buf.len(),
            },
        ));
    }
    for (i, &got) in buf[..h.len as usize].iter().enumerate().skip(HEADER) {
        let want = payload_byte(h.seq, h.writer, i);
        if got != want {
            return Err((Some(h), Defect::Payload { at: i, got, want }));
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_defects() {
        let mut r = vec![0u8; 40];
        encode(&mut r, 3, 1, 77);
        assert_eq!(&r[0..4], b"RLY1");
        let h = check(&r).unwrap();
        assert_eq!((h.len, h.writer, h.cpu, h.seq), (40, 3, 1, 77));
        assert_eq!(r[30], payload_byte(77, 3, 30));
        let mut bad = r.clone();
        bad[35] ^= 1;
        assert!(matches!(
            check(&bad),
            Err((_, Defect::Payload { at: 35, .. }))
        ));
        assert!(matches!(
            check(&r[..30]),
            Err((_, Defect::Truncated { .. }))
        ));
        let mut bad = r.clone();
        bad[0] = 0;
        assert!(matches!(check(&bad), Err((None, Defect::Magic(_)))));
    }

    #[test]
    fn every_payload_byte_follows_the_formula_at_every_length() {
        for len in (HEADER..HEADER + 600).chain([4096, 65_536 + 7]) {
            for (writer, seq) in [(0u32, 0u64), (5, 8), (255, 9), (7, u64::MAX - 3)] {
                let mut r = vec![0xaau8; len];
                encode(&mut r, writer, 2, seq);
                for (i, &b) in r.iter().enumerate().skip(HEADER) {
                    assert_eq!(b, payload_byte(seq, writer, i), "len {len} byte {i}");
                }
                assert!(check(&r).is_ok(), "len {len}");
            }
        }
    }
}
