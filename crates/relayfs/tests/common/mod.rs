//! Helpers shared by the library's test files.
#![allow(dead_code)]

/// The error and its sources, as `anyhow`'s `{:#}` prints them: the
/// library's errors say each cause once, in `source()`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The test records' header: length (u32), writer (u32), sequence (u64).
pub const HDR: usize = 16;

/// Writer `writer`'s record `seq` into `out`, whose length is the record's
/// (at least [`HDR`]): the header, then bytes that depend on all three, so
/// that a torn or misplaced record can't pass for another. Allocates
/// nothing (forked children use it).
pub fn record_into(writer: u32, seq: u64, out: &mut [u8]) {
    let len = out.len();
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&writer.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in out.iter_mut().enumerate().skip(HDR) {
        *b = (seq as usize * 31 + writer as usize * 17 + i) as u8;
    }
}

/// Writer `writer`'s record `seq`, `len` bytes long.
pub fn record(writer: u32, seq: u64, len: usize) -> Vec<u8> {
    let mut r = vec![0; len];
    record_into(writer, seq, &mut r);
    r
}

/// One buffer's stream as (writer, seq) in stream order, each record
/// checked whole against what its writer wrote.
pub fn parse(stream: &[u8]) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        assert!(stream.len() - at >= HDR, "truncated record header at {at}");
        let len = u32::from_le_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        let writer = u32::from_le_bytes(stream[at + 4..at + 8].try_into().unwrap());
        let seq = u64::from_le_bytes(stream[at + 8..at + 16].try_into().unwrap());
        assert!(
            len >= HDR && at + len <= stream.len(),
            "bad record length {len} at {at}"
        );
        assert_eq!(
            &stream[at..at + len],
            &record(writer, seq, len)[..],
            "torn record at {at}"
        );
        out.push((writer, seq));
        at += len;
    }
    out
}

/// One reader thread per buffer of `chan`: each reads `read_size` bytes at
/// a time, polls with `poll` when nothing is readable, and returns its
/// buffer's stream and stats once the channel is closed (a dead producer
/// fails it): what [`gather`] takes.
#[allow(dead_code)]
pub fn drain_to_close(
    chan: &relayfs::Channel,
    read_size: usize,
    poll: std::time::Duration,
) -> Vec<std::thread::JoinHandle<(Vec<u8>, relayfs::BufferStats)>> {
    (0..chan.n_buffers())
        .map(|i| {
            let mut f = relayfs::RelayFile::open(chan.buffer_path(i)).unwrap();
            std::thread::spawn(move || {
                let mut stream = Vec::new();
                let mut buf = vec![0u8; read_size];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    stream.extend_from_slice(&buf[..n]);
                    if n == 0 {
                        match f.poll(Some(poll)).unwrap() {
                            relayfs::Ready::Closed => break,
                            relayfs::Ready::ProducerGone => panic!("producer gone"),
                            _ => {}
                        }
                    }
                }
                (stream, f.stats())
            })
        })
        .collect()
}

/// Joins the reader threads, each returning its buffer's stream and
/// stats, and checks what they delivered: no record (writer, seq) twice,
/// and, with `in_order`, each writer's records in increasing order within
/// a buffer. Returns the records delivered and the buffers' stats summed.
pub fn gather(
    readers: impl IntoIterator<Item = std::thread::JoinHandle<(Vec<u8>, relayfs::BufferStats)>>,
    in_order: bool,
) -> (std::collections::HashSet<(u32, u64)>, relayfs::BufferStats) {
    let mut seen = std::collections::HashSet::new();
    let mut stats = Vec::new();
    for r in readers {
        let (stream, st) = r.join().unwrap();
        stats.push(st);
        let mut last = std::collections::HashMap::<u32, u64>::new();
        for (w, seq) in parse(&stream) {
            assert!(seen.insert((w, seq)), "record {w}/{seq} delivered twice");
            if in_order {
                if let Some(&l) = last.get(&w) {
                    assert!(l < seq, "writer {w}: {seq} after {l}");
                }
                last.insert(w, seq);
            }
        }
    }
    (seen, stats.iter().sum())
}

/// A channel of one global buffer of `n_subbufs` sub-buffers of `subbuf`
/// bytes in `mode`, named `name`, under `dir`.
pub fn global_channel(
    dir: &std::path::Path,
    name: &str,
    subbuf: u64,
    n_subbufs: u64,
    mode: relayfs::Mode,
) -> relayfs::Channel {
    relayfs::Channel::builder(name)
        .dir(dir)
        .subbuf_size(subbuf)
        .n_subbufs(n_subbufs)
        .global(true)
        .mode(mode)
        .open()
        .unwrap()
}

/// Opens a reader of `path`, waiting (up to 10 s) while its reader lock is
/// taken. A reader that was just dropped can still hold it for a moment:
/// another test of the same binary may be starting a child process, and
/// between its `fork` and its `exec` the child holds a copy of every open
/// descriptor, the dropped reader's too.
#[allow(dead_code)]
pub fn open_reader(path: &std::path::Path) -> relayfs::RelayFile {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match relayfs::RelayFile::open(path) {
            Err(relayfs::ReadError::Busy(_)) if std::time::Instant::now() < end => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            other => return other.unwrap(),
        }
    }
}
