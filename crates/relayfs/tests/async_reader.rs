//! The async readers (feature `tokio`): they deliver exactly what the
//! blocking readers do, in both modes, wake for data written later, and end
//! when the producer closes.
#![cfg(feature = "tokio")]

use std::time::Duration;

use relayfs::{AsyncReaders, AsyncRelayFile, Channel, Mode, Ready};

fn rec(i: u64) -> Vec<u8> {
    let len = 10 + (i % 90) as usize;
    let mut v = i.to_le_bytes().to_vec();
    v.extend((8..len).map(|j| (i as usize * 13 + j) as u8));
    v
}

fn channel(dir: &std::path::Path, name: &str, mode: Mode) -> Channel {
    Channel::builder(name)
        .relay_dir(dir)
        .subbuf_size(512)
        .n_subbufs(4)
        .mode(mode)
        .open()
        .unwrap()
}

/// The same deterministic producer run on two channels, one read by the
/// blocking whole-channel reader and one by the async one, attached before
/// anything is written and reading after the close: their bytes, buffer by
/// buffer, and their counters must be the same.
fn same_as_blocking(mode: Mode) {
    let tmp = tempfile::tempdir().unwrap();
    let a = channel(tmp.path(), "blocking", mode);
    let b = channel(tmp.path(), "async", mode);
    let mut blocking = a.open_readers().unwrap();
    let mut asynch = AsyncReaders::new(b.open_readers().unwrap());
    let n_buf = a.n_buffers();
    for i in 0..3000u64 {
        let cpu = (i as usize * 7 / 5) % n_buf;
        let (ra, rb) = (a.write_cpu(cpu, &rec(i)), b.write_cpu(cpu, &rec(i)));
        assert_eq!(ra.is_ok(), rb.is_ok());
    }
    a.close().unwrap();
    b.close().unwrap();

    let mut want = vec![Vec::new(); n_buf];
    let mut buf = vec![0u8; 300];
    while let Some((i, n)) = blocking.read_any(&mut buf).unwrap() {
        want[i].extend_from_slice(&buf[..n]);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let mut got = vec![Vec::new(); n_buf];
        while let Some((i, chunk)) = asynch.next_chunk().await.unwrap() {
            assert!(!chunk.is_empty() && chunk.len() <= 512);
            got[i].extend_from_slice(&chunk);
        }
        got
    });
    for i in 0..n_buf {
        assert_eq!(asynch.end(i), Some(Ready::Closed));
        assert_eq!(got[i], want[i], "buffer {i}");
    }
    let (sa, sb) = (blocking.stats(), asynch.stats());
    assert_eq!(sa, sb);
    let read: usize = got.iter().map(Vec::len).sum();
    assert_eq!(read as u64, sb.bytes_consumed);
    assert!(read > 0);
    if mode == Mode::NoOverwrite {
        assert_eq!(read as u64, sb.bytes_written);
    }
    assert_eq!(3000, sb.records_written() + sb.dropped_full);
    if mode == Mode::Overwrite {
        assert!(sb.overwritten_records > 0, "{sb:?}");
    } else {
        assert!(sb.dropped_full > 0, "{sb:?}");
    }
    assert_eq!(
        sb.records_consumed + sb.overwritten_records + sb.discarded_records,
        sb.records_written()
    );
}

#[test]
fn async_reader_delivers_what_the_blocking_one_does_no_overwrite() {
    same_as_blocking(Mode::NoOverwrite);
}

#[test]
fn async_reader_delivers_what_the_blocking_one_does_overwrite() {
    same_as_blocking(Mode::Overwrite);
}

/// A live producer in another thread: the async reader of one buffer
/// sleeps, is woken as sub-buffers complete, reads every record in order
/// and ends when the producer closes.
#[test]
fn async_reader_follows_a_live_producer_and_ends_at_close() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = Channel::builder("live")
        .relay_dir(tmp.path())
        .subbuf_size(1024)
        .n_subbufs(64)
        .global(true)
        .open()
        .unwrap();
    let mut f = AsyncRelayFile::open(chan.buffer_path(0)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let n = 2000u64;
    let reader = rt.spawn(async move {
        let mut out = Vec::new();
        while let Some(c) = f.next_chunk().await.unwrap() {
            out.extend_from_slice(&c);
        }
        (out, f)
    });
    let mut ok = Vec::new();
    for i in 0..n {
        if chan.write(&rec(i)).is_ok() {
            ok.extend_from_slice(&rec(i));
        }
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    chan.close().unwrap();
    let (out, f) = rt.block_on(reader).unwrap();
    assert_eq!(f.end(), Some(Ready::Closed));
    let st = f.get_ref().stats();
    assert_eq!(out.len() as u64, st.bytes_written);
    assert_eq!(n, st.records_written() + st.dropped_full);
    assert_eq!(out, ok, "every record written, in order, once");
}

/// The async read and the blocking `read` agree on one buffer read both
/// ways in turns.
#[test]
fn async_read_of_one_file_then_the_file_back() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = Channel::builder("one")
        .relay_dir(tmp.path())
        .subbuf_size(256)
        .n_subbufs(4)
        .global(true)
        .open()
        .unwrap();
    let mut f = AsyncRelayFile::open(chan.buffer_path(0)).unwrap();
    chan.write(b"first").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = rt.block_on(f.read(&mut buf)).unwrap();
    assert_eq!(&buf[..n], b"first");
    chan.write(b"second").unwrap();
    let mut file = f.into_inner();
    assert_eq!(file.read(&mut buf).unwrap(), 6);
    assert_eq!(&buf[..6], b"second");
    let mut f = AsyncRelayFile::new(file);
    chan.close().unwrap();
    assert_eq!(rt.block_on(f.read(&mut buf)).unwrap(), 0);
    assert_eq!(f.end(), Some(Ready::Closed));
}

#[test]
fn example_async_reader_reads_a_channel_to_its_end() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/async_reader");
    if !bin.exists() {
        eprintln!("skipped: example async_reader not built (cargo test builds it unless a --test filter is given)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(bin)
        .arg("ex")
        .env("RELAYFS_DIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let chan = Channel::builder("ex")
        .relay_dir(tmp.path())
        .subbuf_size(4096)
        .n_subbufs(64)
        .open()
        .unwrap();
    // The reader takes every buffer before the close (a channel closed
    // with no reader attached is removed at once).
    assert!(
        chan.wait_for_readers(Duration::from_secs(60)),
        "no reader came"
    );
    let mut want = vec![0usize; chan.n_buffers()];
    for i in 0..3000u64 {
        let cpu = (i as usize * 3) % chan.n_buffers();
        if chan.write_cpu(cpu, &rec(i)).is_ok() {
            want[cpu] += rec(i).len();
        }
    }
    chan.close().unwrap();
    let got = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&got.stdout);
    assert!(got.status.success(), "{stdout}");
    for (cpu, n) in want.iter().enumerate() {
        assert!(
            stdout.contains(&format!("cpu{cpu}: {n} bytes (Some(Closed))")),
            "{stdout}"
        );
    }
    let total: usize = want.iter().sum();
    assert!(stdout.contains(&format!("read {total} bytes")), "{stdout}");
}
