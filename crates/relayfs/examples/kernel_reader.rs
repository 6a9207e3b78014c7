//! Reads kernel relay files through the reader API (`AnyRelayFile`:
//! `open`, `read`, timed `poll`) for a while and reports what it got; on a
//! blktrace channel (`/sys/kernel/debug/block/<dev>/traceN`) it also decodes
//! the events.
//!
//! ```text
//! kernel_reader SECONDS FILE...
//! ```
//!
//! Prints one line per file: `file=... kind=... bytes=... reads=...
//! empty_reads=... readable=... timeouts=... events=... queued_writes=...
//! queued_write_bytes=... queued_reads=...`, then `done`.

use std::time::{Duration, Instant};

use relayfs::{AnyRelayFile, Ready, RelayKind};

/// `struct blk_io_trace`: 48 bytes, then `pdu_len` bytes.
const HDR: usize = 48;
/// `__BLK_TA_QUEUE`, in the low 16 bits of `action`.
const TA_QUEUE: u32 = 1;
/// `BLK_TC_READ` / `BLK_TC_WRITE`, in the high 16 bits of `action`.
const TC_READ: u32 = 1 << 16;
const TC_WRITE: u32 = 2 << 16;

#[derive(Default)]
struct Stats {
    bytes: u64,
    reads: u64,
    empty_reads: u64,
    readable: u64,
    timeouts: u64,
    events: u64,
    bad: u64,
    q_writes: u64,
    q_write_bytes: u64,
    q_reads: u64,
}

/// Walks whole events at the front of `carry`, keeping a torn tail.
fn decode(carry: &mut Vec<u8>, st: &mut Stats) {
    let mut at = 0;
    while carry.len() - at >= HDR {
        let h = &carry[at..at + HDR];
        let word = |o: usize| u32::from_ne_bytes(h[o..o + 4].try_into().unwrap());
        if word(0) & 0xffff_ff00 != 0x6561_7400 {
            st.bad += (carry.len() - at) as u64;
            at = carry.len();
            break;
        }
        let pdu = u16::from_ne_bytes(h[46..48].try_into().unwrap()) as usize;
        if carry.len() - at < HDR + pdu {
            break;
        }
        let (bytes, action) = (word(24), word(28));
        st.events += 1;
        if action & 0xffff == TA_QUEUE {
            if action & TC_WRITE != 0 {
                st.q_writes += 1;
                st.q_write_bytes += u64::from(bytes);
            } else if action & TC_READ != 0 {
                st.q_reads += 1;
            }
        }
        at += HDR + pdu;
    }
    carry.drain(..at);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(secs), files) = (args.first().and_then(|s| s.parse::<f64>().ok()), &args[1..]) else {
        eprintln!("usage: kernel_reader SECONDS FILE...");
        std::process::exit(2);
    };
    if files.is_empty() {
        eprintln!("usage: kernel_reader SECONDS FILE...");
        std::process::exit(2);
    }
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<_> = files
        .iter()
        .map(|path| {
            let path = path.clone();
            std::thread::spawn(move || -> Result<String, relayfs::ReadError> {
                // Read each per-CPU file on its own CPU, as blktrace does: the
                // kernel fills an event with interrupts off on that CPU, so
                // from there no read can catch one half-filled.
                let digits = path.len() - path.trim_end_matches(|c: char| c.is_ascii_digit()).len();
                if let Ok(cpu) = path[path.len() - digits..].parse::<usize>() {
                    let _ = relayfs::cpu::pin_current_thread(cpu);
                }
                let mut f = AnyRelayFile::open(&path)?;
                let kind = match f.kind() {
                    RelayKind::Kernel => "kernel",
                    RelayKind::Shm => "shm",
                };
                let mut st = Stats::default();
                let mut carry = Vec::new();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = f.read(&mut buf)?;
                    st.reads += 1;
                    if n > 0 {
                        st.bytes += n as u64;
                        carry.extend_from_slice(&buf[..n]);
                        decode(&mut carry, &mut st);
                        continue;
                    }
                    st.empty_reads += 1;
                    if Instant::now() >= until {
                        break;
                    }
                    match f.poll(Some(Duration::from_millis(100)))? {
                        Ready::Readable => st.readable += 1,
                        Ready::Timeout => st.timeouts += 1,
                        Ready::Closed | Ready::ProducerGone => break,
                    }
                }
                st.bad += carry.len() as u64;
                Ok(format!(
                    "file={path} kind={kind} bytes={} reads={} empty_reads={} readable={} timeouts={} events={} bad_bytes={} queued_writes={} queued_write_bytes={} queued_reads={}",
                    st.bytes, st.reads, st.empty_reads, st.readable, st.timeouts, st.events,
                    st.bad, st.q_writes, st.q_write_bytes, st.q_reads
                ))
            })
        })
        .collect();
    let mut failed = false;
    for t in threads {
        match t.join() {
            Ok(Ok(line)) => println!("{line}"),
            Ok(Err(e)) => {
                let mut msg = e.to_string();
                let mut cur = std::error::Error::source(&e);
                while let Some(c) = cur {
                    msg = format!("{msg}: {c}");
                    cur = c.source();
                }
                eprintln!("kernel_reader: {msg}");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    println!("done");
    std::process::exit(i32::from(failed));
}
