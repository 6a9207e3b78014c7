//! Checks blktrace output files (`<dev>.blktrace.<cpu>`, as `relayfs
//! blktrace` and blktrace write them), independently of the tool: each file
//! must be whole `struct blk_io_trace` events from its first byte to its
//! last, and the events (notes aside, which the kernel doesn't number) must
//! carry the sequence numbers 1, 2, ... N of their CPU, without a gap or a
//! repeat.
//!
//! `blktrace_check FILE...` prints one line per file
//! (`file=.. bytes=.. events=.. notes=.. unparsed=.. first=.. last=..
//! gaps=.. repeats=..`) and exits 1 if any file fails.

use std::process::ExitCode;

/// `BLK_IO_TRACE_MAGIC`; the low byte is the version.
const MAGIC: u32 = 0x6561_7400;
/// Size of `struct blk_io_trace`.
const HEADER: usize = 48;
/// `BLK_TC_ACT(BLK_TC_NOTIFY)` (`BLK_TC_NOTIFY` is `1 << 10`, shifted by
/// `BLK_TC_SHIFT`, 16): notes (process names, the start time, messages).
const NOTE: u32 = 1 << 26;

#[derive(Default)]
struct Check {
    events: u64,
    notes: u64,
    unparsed: usize,
    first: Option<u32>,
    last: u32,
    gaps: u64,
    repeats: u64,
}

fn check(data: &[u8]) -> Check {
    let mut c = Check::default();
    let mut at = 0;
    let u32_at = |o: usize| u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
    while at < data.len() {
        if data.len() - at < HEADER || u32_at(at) & 0xffff_ff00 != MAGIC {
            break;
        }
        let pdu = u16::from_ne_bytes(data[at + 46..at + 48].try_into().unwrap()) as usize;
        if data.len() - at - HEADER < pdu {
            break;
        }
        let seq = u32_at(at + 4);
        let action = u32_at(at + 28);
        if action & NOTE != 0 {
            c.notes += 1;
        } else {
            c.events += 1;
            match c.first {
                None => c.first = Some(seq),
                Some(_) if seq == c.last.wrapping_add(1) => {}
                Some(_) if seq <= c.last => c.repeats += 1,
                Some(_) => c.gaps += 1,
            }
            c.last = seq;
        }
        at += HEADER + pdu;
    }
    c.unparsed = data.len() - at;
    c
}

fn main() -> ExitCode {
    let mut ok = true;
    for path in std::env::args().skip(1) {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{path}: {e}");
                ok = false;
                continue;
            }
        };
        let c = check(&data);
        let good =
            c.unparsed == 0 && c.gaps == 0 && c.repeats == 0 && c.first.is_none_or(|f| f == 1);
        ok &= good;
        println!(
            "file={path} bytes={} events={} notes={} unparsed={} first={} last={} gaps={} repeats={} ok={}",
            data.len(),
            c.events,
            c.notes,
            c.unparsed,
            c.first.unwrap_or(0),
            c.last,
            c.gaps,
            c.repeats,
            u8::from(good)
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
