//! Framed records: writing through a channel, decoding from any byte source
//! and from a live relay file, corruption and resynchronisation, and the
//! time-ordered merge.

use std::path::PathBuf;
use std::process::Command;

use proptest::prelude::*;
use relayfs::frame::{
    encode_header, framed_len, Corruption, Decoder, FrameError, Merge, OwnedRecord, Records,
    FLAG_TIMESTAMP, MAGIC,
};
use relayfs::{Channel, Ready, RelayFile, WriteError};

const ROLE: &str = "RELAYFS_FRAME_TEST_CHILD";

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// A global channel (one buffer whatever the CPU count) with a reader on it.
fn global(dir: &std::path::Path, subbuf: u64, n: u64) -> (Channel, RelayFile) {
    let chan = Channel::builder("f")
        .dir(dir)
        .subbuf_size(subbuf)
        .n_subbufs(n)
        .global(true)
        .open()
        .unwrap();
    let reader = RelayFile::open(chan.buffer_path(0)).unwrap();
    (chan, reader)
}

/// Decodes a whole byte stream fed in pieces cut at `cuts`.
fn decode_pieces(s: &[u8], cuts: &[usize]) -> (Vec<OwnedRecord>, Vec<FrameError>, Decoder) {
    let mut d = Decoder::new();
    let (mut recs, mut errs) = (Vec::new(), Vec::new());
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&s.len())) {
        d.feed(&s[at..c]);
        at = c;
        while let Some(r) = d.next_record() {
            match r {
                Ok(r) => recs.push(r.to_owned()),
                Err(e) => errs.push(e),
            }
        }
    }
    errs.extend(d.finish());
    (recs, errs, d)
}

#[test]
fn every_payload_length_round_trips_and_too_big_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let subbuf = 256u64;
    let (chan, reader) = global(dir.path(), subbuf, 1024);
    let max = chan.geometry().max_record() as usize;
    let mut offered = 0u64;
    let mut too_big = 0u64;
    let mut want = Vec::new();
    for len in 0..=subbuf as usize + 20 {
        for how in 0..4 {
            let timed = how % 2 == 1;
            let p = payload(len * 4 + how, len);
            offered += 1;
            let res = match how {
                0 => chan.write_record(&p),
                1 => chan.write_record_timed(&p),
                _ => {
                    let r = if timed {
                        chan.reserve_record_timed(len)
                    } else {
                        chan.reserve_record(len)
                    };
                    r.map(|mut slot| {
                        assert_eq!(slot.len(), len);
                        assert_eq!(slot.timestamp().is_some(), timed);
                        slot.copy_from_slice(&p);
                        slot.commit();
                    })
                }
            };
            if framed_len(len, timed) > max {
                assert_eq!(res, Err(WriteError::TooBig(framed_len(len, timed))));
                too_big += 1;
            } else {
                res.unwrap();
                want.push((timed, p));
            }
        }
    }
    assert!(too_big > 0 && !want.is_empty());
    let stats = chan.close().unwrap();
    assert_eq!(stats.dropped_toobig, too_big);
    let mut records = Records::live(reader);
    let mut got = Vec::new();
    let mut last_ts = 0;
    while let Some(r) = records.next_record() {
        let r = r.unwrap();
        if let Some(t) = r.timestamp {
            // One writer thread: its timestamps don't go back.
            assert!(t >= last_ts);
            last_ts = t;
        }
        got.push((r.timestamp.is_some(), r.payload.to_vec()));
    }
    assert_eq!(records.source().end(), Some(Ready::Closed));
    assert_eq!(got, want);
    assert_eq!(offered, got.len() as u64 + stats.lost());
    assert_eq!(records.decoder().skipped_bytes(), 0);
}

/// The `read` stream of a channel holding records of many lengths.
fn channel_stream() -> (Vec<u8>, Vec<OwnedRecord>) {
    let dir = tempfile::tempdir().unwrap();
    let (chan, mut reader) = global(dir.path(), 512, 64);
    for i in 0..40 {
        let p = payload(i, (i * 13) % 150);
        if i % 3 == 0 {
            chan.write_record_timed(&p).unwrap();
        } else {
            chan.write_record(&p).unwrap();
        }
    }
    chan.close().unwrap();
    let mut s = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        s.extend_from_slice(&buf[..n]);
    }
    let want: Vec<OwnedRecord> = Records::from_reader(&s[..]).map(Result::unwrap).collect();
    assert_eq!(want.len(), 40);
    for (i, r) in want.iter().enumerate() {
        assert_eq!(r.payload, payload(i, (i * 13) % 150));
        assert_eq!(r.timestamp.is_some(), i % 3 == 0);
    }
    (s, want)
}

#[test]
fn reads_cut_at_every_offset_decode_the_same() {
    let (s, want) = channel_stream();
    for cut in 0..=s.len() {
        let (got, errs, _) = decode_pieces(&s, &[cut]);
        assert!(errs.is_empty(), "cut at {cut}: {errs:?}");
        assert_eq!(got, want, "cut at {cut}");
    }
    // One byte at a time.
    let cuts: Vec<usize> = (1..s.len()).collect();
    let (got, errs, _) = decode_pieces(&s, &cuts);
    assert!(errs.is_empty());
    assert_eq!(got, want);
}

#[test]
fn corruption_is_reported_at_its_offset_and_resynchronised() {
    let (s, want) = channel_stream();
    // Garbage (without the magic's first byte) between records 10 and 11.
    let at = want[11].offset as usize;
    let garbage: Vec<u8> = (0..37u8).map(|i| i.wrapping_mul(5) | 1).collect();
    assert!(!garbage.contains(&MAGIC[0]));
    let mut bad = s[..at].to_vec();
    bad.extend_from_slice(&garbage);
    bad.extend_from_slice(&s[at..]);
    let (got, errs, d) = decode_pieces(&bad, &[at + 3]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        matches!(errs[0], FrameError::Corrupt { offset, reason: Corruption::Magic } if offset == at as u64),
        "{errs:?}"
    );
    assert_eq!(d.skipped_bytes(), garbage.len() as u64);
    let payloads = |v: &[OwnedRecord]| v.iter().map(|r| r.payload.clone()).collect::<Vec<_>>();
    assert_eq!(payloads(&got), payloads(&want));
    assert_eq!(got[11].offset, want[11].offset + garbage.len() as u64);

    // A flipped bit in record 5's length: that record is lost (reported at
    // its offset), the ones after it come out.
    let mut bad = s.clone();
    let at = want[5].offset as usize;
    bad[at + 4] ^= 0x40;
    let (got, errs, d) = decode_pieces(&bad, &[]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        matches!(errs[0], FrameError::Corrupt { offset, reason: Corruption::Check } if offset == at as u64),
        "{errs:?}"
    );
    let mut expect = want.clone();
    let lost = expect.remove(5);
    assert_eq!(got, expect);
    assert_eq!(
        d.skipped_bytes(),
        framed_len(lost.payload.len(), lost.timestamp.is_some()) as u64
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the bytes and however they are cut, the decoder never
    /// panics, and every byte is either in a record or skipped.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        magic_at in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let mut bytes = bytes;
        // Plant magic bytes, and sometimes a whole valid header, so that
        // the decoder's header paths run too.
        for (k, m) in magic_at.iter().enumerate() {
            if bytes.len() >= 8 {
                let i = m.index(bytes.len() - 7);
                if k % 2 == 0 {
                    bytes[i..i + 2].copy_from_slice(&MAGIC);
                } else {
                    let len = (bytes[i] as u32) % 64;
                    bytes[i..i + 8].copy_from_slice(&encode_header(len, (k % 4 == 1) as u8 * FLAG_TIMESTAMP));
                }
            }
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let (recs, _errs, d) = decode_pieces(&bytes, &cuts);
        let in_records: u64 = recs
            .iter()
            .map(|r| framed_len(r.payload.len(), r.timestamp.is_some()) as u64)
            .sum();
        prop_assert_eq!(in_records + d.skipped_bytes(), bytes.len() as u64);
        prop_assert_eq!(d.offset(), bytes.len() as u64);
        prop_assert_eq!(d.records(), recs.len() as u64);
    }

    /// Garbage inserted between records of a valid stream: each run is
    /// reported once, at its offset, and every record comes out.
    #[test]
    fn garbage_between_records_is_resynchronised(
        lens in proptest::collection::vec(0usize..100, 1..30),
        inserts in proptest::collection::vec((any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..40)), 1..5),
    ) {
        let mut s = Vec::new();
        let mut bounds = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            bounds.push(s.len());
            let timed = i % 2 == 0;
            s.extend_from_slice(&encode_header(len as u32, timed as u8 * FLAG_TIMESTAMP));
            if timed {
                s.extend_from_slice(&(i as u64).to_le_bytes());
            }
            s.extend_from_slice(&payload(i, len));
        }
        bounds.push(s.len());
        // Where each run goes (a record boundary) and its bytes, without
        // the magic's first byte: then no header can start in it.
        let mut runs: Vec<(usize, Vec<u8>)> = inserts
            .into_iter()
            .map(|(at, g)| {
                let g: Vec<u8> = g.into_iter().map(|b| if b == MAGIC[0] { 0 } else { b }).collect();
                (bounds[at.index(bounds.len())], g)
            })
            .collect();
        runs.sort_by_key(|r| r.0);
        let mut bad = Vec::new();
        let mut from = 0;
        let mut want_offsets = Vec::new();
        let mut garbage = 0u64;
        let mut last_at = None;
        for (at, g) in &runs {
            bad.extend_from_slice(&s[from..*at]);
            from = *at;
            // Two runs at one boundary are one run.
            if last_at != Some(*at) {
                want_offsets.push(bad.len() as u64);
            }
            last_at = Some(*at);
            bad.extend_from_slice(g);
            garbage += g.len() as u64;
        }
        bad.extend_from_slice(&s[from..]);
        let (recs, errs, d) = decode_pieces(&bad, &[bad.len() / 2]);
        let offsets: Vec<u64> = errs
            .iter()
            .map(|e| match e {
                FrameError::Corrupt { offset, .. } => *offset,
                other => panic!("{other:?}"),
            })
            .collect();
        prop_assert_eq!(offsets, want_offsets);
        prop_assert_eq!(d.skipped_bytes(), garbage);
        prop_assert_eq!(recs.len(), lens.len());
        for (i, r) in recs.iter().enumerate() {
            prop_assert_eq!(&r.payload, &payload(i, lens[i]));
            prop_assert_eq!(r.timestamp, (i % 2 == 0).then_some(i as u64));
        }
    }

    /// Sources each in timestamp order merge into one stream in timestamp
    /// order, ties in source order, each source's records in its order,
    /// nothing lost or repeated.
    #[test]
    fn merge_of_ordered_sources_is_ordered(
        sources in proptest::collection::vec(proptest::collection::vec((0u64..50, any::<bool>()), 0..20), 0..6),
    ) {
        // Per source: non-decreasing timestamps; some records untimed.
        let sources: Vec<Vec<OwnedRecord>> = sources
            .iter()
            .enumerate()
            .map(|(s, v)| {
                let mut t = 0;
                v.iter()
                    .enumerate()
                    .map(|(k, &(d, timed))| {
                        t += d;
                        OwnedRecord {
                            offset: k as u64,
                            timestamp: timed.then_some(t),
                            payload: vec![s as u8, k as u8],
                        }
                    })
                    .collect()
            })
            .collect();
        let merge = Merge::new(sources.iter().map(|v| v.clone().into_iter().map(Ok)));
        let mut merge = merge;
        let out: Vec<(usize, OwnedRecord)> = merge.by_ref().map(|(i, r)| (i, r.unwrap())).collect();
        prop_assert_eq!(merge.out_of_order(), 0);
        prop_assert_eq!(out.len(), sources.iter().map(Vec::len).sum::<usize>());
        // Effective key of each record: its timestamp, or its source's last.
        let key = |i: usize, k: u64| {
            sources[i][..=k as usize].iter().rev().find_map(|r| r.timestamp).unwrap_or(0)
        };
        let keys: Vec<(u64, usize, u64)> = out.iter().map(|(i, r)| (key(*i, r.offset), *i, r.offset)).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        prop_assert_eq!(keys, sorted);
        for (i, r) in &out {
            prop_assert_eq!(r, &sources[*i][r.offset as usize]);
        }
    }
}

#[test]
fn merge_counts_a_source_out_of_order_and_passes_errors_on() {
    let rec = |ts: u64| OwnedRecord {
        offset: 0,
        timestamp: Some(ts),
        payload: ts.to_le_bytes().to_vec(),
    };
    let a = vec![Ok(rec(5)), Ok(rec(3)), Ok(rec(9))];
    let b = vec![
        Ok(rec(4)),
        Err(FrameError::Corrupt {
            offset: 77,
            reason: Corruption::Magic,
        }),
        Ok(rec(6)),
    ];
    let mut m = Merge::new([a.into_iter(), b.into_iter()]);
    let out: Vec<(usize, Result<OwnedRecord, FrameError>)> = m.by_ref().collect();
    let ts: Vec<Option<u64>> = out
        .iter()
        .map(|(_, r)| r.as_ref().ok().and_then(|r| r.timestamp))
        .collect();
    // Every record once, the error once (from source 1, at its offset).
    assert_eq!(ts.iter().flatten().count(), 5);
    let errs: Vec<_> = out.iter().filter(|(_, r)| r.is_err()).collect();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].0, 1);
    assert!(matches!(
        errs[0].1,
        Err(FrameError::Corrupt { offset: 77, .. })
    ));
    // Inversions counted exactly: records below the largest emitted before.
    let mut max = 0;
    let mut inversions = 0;
    for t in ts.iter().flatten() {
        if *t < max {
            inversions += 1;
        }
        max = max.max(*t);
    }
    assert!(inversions > 0);
    assert_eq!(m.out_of_order(), inversions);
}

/// Writer threads on a per-CPU channel, a reader per buffer, merged: every
/// record once, in time order but for the inversions the merge counts, and
/// each thread's records in the order it wrote them when there are none.
#[test]
fn merged_buffers_are_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let chan = Channel::builder("m")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(256)
        .open()
        .unwrap();
    let readers: Vec<RelayFile> = (0..chan.n_buffers())
        .map(|i| RelayFile::open(chan.buffer_path(i)).unwrap())
        .collect();
    let (threads, per) = (4u32, 2000u32);
    std::thread::scope(|s| {
        for t in 0..threads {
            let chan = &chan;
            s.spawn(move || {
                for k in 0..per {
                    let mut p = t.to_le_bytes().to_vec();
                    p.extend_from_slice(&k.to_le_bytes());
                    chan.write_record_timed(&p).unwrap();
                }
            });
        }
    });
    let stats = chan.close().unwrap();
    assert_eq!(stats.lost(), 0);
    let mut merge = Merge::new(readers.into_iter().map(Records::live));
    let mut seen = vec![Vec::new(); threads as usize];
    let mut max = 0;
    let mut inversions = 0;
    for (_, r) in merge.by_ref() {
        let r = r.unwrap();
        let ts = r.timestamp.unwrap();
        if ts < max {
            inversions += 1;
        }
        max = max.max(ts);
        let t = u32::from_le_bytes(r.payload[..4].try_into().unwrap());
        let k = u32::from_le_bytes(r.payload[4..].try_into().unwrap());
        seen[t as usize].push(k);
    }
    assert_eq!(merge.out_of_order(), inversions);
    for s in &mut seen {
        if inversions == 0 {
            assert!(s.windows(2).all(|w| w[0] < w[1]));
        }
        s.sort_unstable();
        assert_eq!(*s, (0..per).collect::<Vec<_>>());
    }
}

/// The producer process of `live_records_from_another_process`.
#[test]
fn child_framed_producer() {
    let Ok(dir) = std::env::var(ROLE) else {
        return;
    };
    let n: usize = std::env::var("RELAYFS_FRAME_TEST_N")
        .unwrap()
        .parse()
        .unwrap();
    let chan = Channel::builder("x")
        .base("x")
        .dir(PathBuf::from(&dir))
        .subbuf_size(1024)
        .n_subbufs(8)
        .global(true)
        .open()
        .unwrap();
    // Wait for the reader (it drops the go file), then write more than the
    // ring holds, retrying what a full buffer refuses.
    let go = PathBuf::from(&dir).join("go");
    let start = std::time::Instant::now();
    while !go.exists() {
        assert!(start.elapsed().as_secs() < 60, "no reader came");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for i in 0..n {
        let p = payload(i, i % 200);
        while let Err(e) = chan.write_record_timed(&p) {
            assert_eq!(e, WriteError::Full);
            std::thread::yield_now();
        }
    }
    chan.close().unwrap();
}

#[test]
fn live_records_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3000usize;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_framed_producer", "--nocapture"])
        .env(ROLE, dir.path())
        .env("RELAYFS_FRAME_TEST_N", n.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let path = dir.path().join("x0");
    let start = std::time::Instant::now();
    let reader = loop {
        match RelayFile::open(&path) {
            Ok(r) => break r,
            Err(_) if start.elapsed().as_secs() < 30 => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    };
    std::fs::write(dir.path().join("go"), b"").unwrap();
    let mut records = Records::live(reader);
    let mut i = 0;
    while let Some(r) = records.next_record() {
        let r = r.unwrap();
        assert_eq!(r.payload, payload(i, i % 200));
        assert!(r.timestamp.is_some());
        i += 1;
    }
    assert_eq!(i, n);
    assert_eq!(records.source().end(), Some(Ready::Closed));
    assert_eq!(records.decoder().skipped_bytes(), 0);
    assert!(child.wait().unwrap().success());
}

/// The example program, run as a function: its counts add up.
#[test]
fn the_example_runs() {
    #[allow(dead_code)]
    #[path = "../examples/framed.rs"]
    mod example;
    let dir = tempfile::tempdir().unwrap();
    let report = example::run(dir.path(), 3, 500).unwrap();
    assert_eq!(report.offered, 3 * 500);
    assert_eq!(report.decoded + report.dropped, report.offered);
    assert_eq!(report.per_thread.iter().sum::<u64>(), report.decoded);
    assert_eq!(report.errors, 0);
    assert_eq!(report.out_of_order, report.inversions_seen);
}

/// A source whose reads fail after some bytes: the error is an item, the
/// records before it come out, and the stream ends instead of repeating it.
#[test]
fn a_failing_source_ends_the_stream_after_its_error() {
    struct Failing<'a>(&'a [u8]);
    impl std::io::Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::other("device gone"));
            }
            let n = buf.len().min(self.0.len()).min(100);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let (s, want) = channel_stream();
    // Cut inside the last record.
    let cut = want[want.len() - 1].offset as usize + 3;
    let items: Vec<_> = Records::from_reader(Failing(&s[..cut])).collect();
    let (ok, err): (Vec<_>, Vec<_>) = items.into_iter().partition(Result::is_ok);
    let ok: Vec<OwnedRecord> = ok.into_iter().map(Result::unwrap).collect();
    assert_eq!(ok, want[..want.len() - 1]);
    assert_eq!(err.len(), 2, "{err:?}");
    assert!(matches!(err[0], Err(FrameError::Io(_))));
    assert!(
        matches!(err[1], Err(FrameError::Truncated { offset, have: 3, .. }) if offset == want[want.len() - 1].offset)
    );
}

/// `write_record_timed_with` stores what its clock returns, asks it once
/// for a record written and never for one refused.
#[test]
fn timed_with_a_given_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (chan, reader) = global(dir.path(), 256, 2);
    let mut calls = 0;
    let mut written = 0u64;
    let mut refused = 0u64;
    for i in 0..40u64 {
        let r = chan.write_record_timed_with(&payload(i as usize, 40), || {
            calls += 1;
            1_000 + i
        });
        match r {
            Ok(()) => written += 1,
            Err(WriteError::Full) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        written > 0 && refused > 0,
        "{written} written, {refused} refused"
    );
    assert_eq!(calls, written);
    chan.close().unwrap();
    let got: Vec<OwnedRecord> = Records::live(reader).map(Result::unwrap).collect();
    assert_eq!(got.len() as u64, written);
    for r in &got {
        let i = r.timestamp.unwrap() - 1_000;
        assert_eq!(r.payload, payload(i as usize, 40));
    }
}
