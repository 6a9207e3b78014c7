//! The whole-channel reader: `Readers::open` (waiting for publication,
//! checking the channel), `Readers::poll` and `read_any`, with exact
//! accounting across processes (the test binary runs itself as the
//! producer: `child_producer`, active only when RELAYFS_TEST_CHILD is set).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use relayfs::{Channel, ChannelError, OpenError, ReadAny, Readers, Ready};

const ROLE: &str = "RELAYFS_TEST_CHILD";
const THREADS: u64 = 4;

/// Record `i` of thread `t`: its length (1 byte), then `t`, `i`, then
/// bytes derived from both; 18 to 81 bytes.
fn rec(t: u64, i: u64) -> Vec<u8> {
    let len = 18 + ((i * 7 + t) % 64) as usize;
    let mut v = vec![len as u8, t as u8];
    v.extend_from_slice(&i.to_le_bytes());
    v.extend((v.len()..len).map(|j| (i as usize * 31 + j + t as usize) as u8));
    v
}

/// Splits a buffer's byte stream into records, checking each is whole.
fn records(stream: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let len = stream[at] as usize;
        assert!(len >= 18 && at + len <= stream.len(), "torn record at {at}");
        let t = stream[at + 1] as u64;
        let i = u64::from_le_bytes(stream[at + 2..at + 10].try_into().unwrap());
        assert_eq!(
            &stream[at..at + len],
            &rec(t, i)[..],
            "record {t}/{i} damaged"
        );
        out.push((t, i));
        at += len;
    }
    out
}

/// The producer process: THREADS threads write N records each into a
/// per-CPU channel of small buffers (so that some are dropped), then it
/// writes how many writes succeeded to `<dir>/written` and closes.
#[test]
fn child_producer() {
    let Ok(mode) = std::env::var(ROLE) else {
        return;
    };
    let root = PathBuf::from(std::env::var("RELAYFS_TEST_DIR").unwrap());
    let n: u64 = std::env::var("RELAYFS_TEST_N").unwrap().parse().unwrap();
    let chan = Channel::builder("acct")
        .relay_dir(&root)
        .subbuf_size(1024)
        .n_subbufs(4)
        .mode(if mode == "overwrite" {
            relayfs::Mode::Overwrite
        } else {
            relayfs::Mode::NoOverwrite
        })
        .open()
        .unwrap();
    let ok: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let chan = &chan;
                s.spawn(move || {
                    let mut ok = 0;
                    for i in 0..n {
                        match chan.write(&rec(t, i)) {
                            Ok(()) => ok += 1,
                            Err(relayfs::WriteError::Full) => {}
                            Err(e) => panic!("write: {e}"),
                        }
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                    ok
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    std::fs::write(root.join("written"), ok.to_string()).unwrap();
    if mode == "hang" {
        // Killed here, with the last sub-buffers partly filled.
        std::thread::sleep(Duration::from_secs(120));
    }
    chan.close().unwrap();
}

/// Reads every buffer of the channel to its end, a buffer's bytes in order.
fn drain(r: &mut Readers) -> Vec<Vec<u8>> {
    let mut per = vec![Vec::new(); r.len()];
    let mut buf = vec![0u8; 700];
    while let Some((i, n)) = r.read_any(&mut buf).unwrap() {
        assert!(n > 0 && n <= buf.len());
        per[i].extend_from_slice(&buf[..n]);
    }
    per
}

fn spawn_producer(mode: &str, root: &Path, n: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "child_producer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, mode)
        .env("RELAYFS_TEST_DIR", root)
        .env("RELAYFS_TEST_N", n.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_producer_ends_the_channel_with_everything_it_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 500;
    let mut child = spawn_producer("hang", tmp.path(), n);
    let mut r = Readers::open(tmp.path().join("acct"), Some(Duration::from_secs(60))).unwrap();
    let killer = std::thread::spawn({
        let written = tmp.path().join("written");
        move || {
            let t = std::time::Instant::now();
            while !written.exists() {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "the producer did not write"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            child.kill().unwrap();
            child.wait().unwrap();
        }
    });
    let per = drain(&mut r);
    killer.join().unwrap();
    for i in 0..r.len() {
        assert_eq!(r.end(i), Some(Ready::ProducerGone), "buffer {i}");
    }
    let ok: u64 = std::fs::read_to_string(tmp.path().join("written"))
        .unwrap()
        .parse()
        .unwrap();
    let mut seen = HashSet::new();
    for p in &per {
        for id in records(p) {
            assert!(seen.insert(id), "record {id:?} delivered twice");
        }
    }
    // Every record written was committed before the kill: all delivered,
    // the partly filled sub-buffers' too.
    assert_eq!(seen.len() as u64, ok);
    let st = r.stats();
    assert_eq!(THREADS * n, ok + st.dropped_full, "{st:?}");
}

fn cross_process(mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let n = 3000;
    let mut child = spawn_producer(mode, tmp.path(), n);
    // Started before the producer publishes: it waits for the channel.
    let mut r = Readers::open(tmp.path().join("acct"), Some(Duration::from_secs(60))).unwrap();
    let per = drain(&mut r);
    assert!(child.wait().unwrap().success());
    assert!(r.is_done());
    for i in 0..r.len() {
        assert_eq!(r.end(i), Some(Ready::Closed), "buffer {i}");
    }
    let st = r.stats();
    let read: u64 = per.iter().map(|p| p.len() as u64).sum();
    // Every byte delivered is counted consumed; in no-overwrite mode that
    // is every byte the producer committed (overwrite mode: less what it
    // overwrote, whose records are counted below).
    assert_eq!(read, st.bytes_consumed, "{st:?}");
    if mode == "no-overwrite" {
        assert_eq!(read, st.bytes_written, "{st:?}");
    }
    assert_eq!(st.records_pending, 0);
    // Every record offered was written or dropped, and every one written
    // was delivered once (overwrite mode: or counted overwritten).
    let ok: u64 = std::fs::read_to_string(tmp.path().join("written"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        THREADS * n,
        st.records_written() + st.dropped_full,
        "{st:?}"
    );
    assert_eq!(ok, st.records_written());
    let mut seen = HashSet::new();
    for p in &per {
        for id in records(p) {
            assert!(seen.insert(id), "record {id:?} delivered twice");
        }
    }
    assert_eq!(
        seen.len() as u64 + st.overwritten_records + st.discarded_records,
        st.records_written(),
        "{st:?}"
    );
    assert_eq!(st.records_consumed, seen.len() as u64);
}

#[test]
fn a_whole_channel_read_across_processes_adds_up_no_overwrite() {
    cross_process("no-overwrite");
}

#[test]
fn a_whole_channel_read_across_processes_adds_up_overwrite() {
    cross_process("overwrite");
}

#[test]
fn poll_reports_the_buffer_with_data_then_the_end() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = Channel::builder("p")
        .dir(tmp.path())
        .subbuf_size(256)
        .n_subbufs(4)
        .open()
        .unwrap();
    let mut r = chan.open_readers().unwrap();
    assert_eq!(r.len(), chan.n_buffers());
    assert_eq!(r.poll(Some(Duration::ZERO)).unwrap(), Default::default());
    let last = chan.n_buffers() - 1;
    chan.write_cpu(last, b"to the last buffer").unwrap();
    // A partly filled sub-buffer is readable in no-overwrite mode.
    let got = r.poll(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(got.readable, vec![last]);
    assert!(got.ended.is_empty());
    let mut buf = [0u8; 64];
    assert_eq!(
        r.read_any_timeout(&mut buf, Some(Duration::ZERO)).unwrap(),
        ReadAny::Data {
            index: last,
            len: 18
        }
    );
    assert_eq!(&buf[..18], b"to the last buffer");
    assert_eq!(
        r.read_any_timeout(&mut buf, Some(Duration::ZERO)).unwrap(),
        ReadAny::Timeout
    );
    // Records written while the reader sleeps wake it (3 sub-buffers' worth:
    // the buffer holds them all, so none is dropped).
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..6 {
                chan.write_cpu(0, &[7u8; 100]).unwrap();
            }
        });
        let mut got = 0;
        while got < 600 {
            match r.read_any(&mut buf).unwrap() {
                Some((0, n)) => got += n,
                other => panic!("{other:?}"),
            }
        }
    });
    chan.close().unwrap();
    let got = r.poll(Some(Duration::MAX)).unwrap();
    assert!(got.readable.is_empty());
    assert_eq!(got.ended, (0..r.len()).collect::<Vec<_>>());
    assert!(r.is_done());
    assert_eq!(r.read_any(&mut buf).unwrap(), None);
    assert_eq!(r.stats().bytes_written, 618);
}

#[test]
fn readers_give_the_files_by_index_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let chan = Channel::builder("x")
        .base("trace")
        .dir(tmp.path())
        .subbuf_size(256)
        .n_subbufs(2)
        .open()
        .unwrap();
    for bad in ["", "../trace", "a/b"] {
        let e = Readers::open_base(tmp.path(), bad, None).unwrap_err();
        assert!(
            matches!(&e, ChannelError::Dir { source: OpenError::Name(n), .. } if n == bad),
            "{e:?}"
        );
    }
    // A wait too long to represent is no limit (and the channel is there).
    let r = Readers::open_base(tmp.path(), "trace", Some(Duration::MAX)).unwrap();
    drop(r);
    let r = Readers::open_base(tmp.path(), "trace", None).unwrap();
    for (i, f) in r.iter().enumerate() {
        assert_eq!(f.header().cpu, i as u64);
        assert_eq!(f.path(), chan.buffer_path(i));
        assert_eq!(f.header().channel_id, r.channel_id());
    }
    assert_eq!(r[0].path(), chan.buffer_path(0));
    assert!(r.get(r.len()).is_none());
    let files = r.into_inner();
    assert_eq!(files.len(), chan.n_buffers());
    // One reader per buffer: the files are still held.
    drop(files);
    let r = chan.open_readers().unwrap();
    assert!(matches!(
        chan.open_readers().unwrap_err(),
        ChannelError::Read(relayfs::ReadError::Busy(_))
    ));
    drop(r);
}

#[test]
fn a_name_resolves_under_the_relay_root() {
    // RELAYFS_DIR is set in a child process only (tests share the
    // environment): the child opens the parent's channel by name.
    if std::env::var_os("RELAYFS_TEST_BY_NAME").is_some() {
        let r = Readers::open("named", None).unwrap();
        assert_eq!(r.len(), 1);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let chan = Channel::builder("named")
        .relay_dir(tmp.path())
        .subbuf_size(256)
        .n_subbufs(2)
        .global(true)
        .open()
        .unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["a_name_resolves_under_the_relay_root", "--exact"])
        .env("RELAYFS_TEST_BY_NAME", "1")
        .env("RELAYFS_DIR", tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    chan.close().unwrap();
}

#[test]
fn open_waits_for_a_channel_published_later() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let producer = s.spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let chan = Channel::builder("late")
                .relay_dir(&root)
                .subbuf_size(256)
                .n_subbufs(2)
                .open()
                .unwrap();
            let n = chan.n_buffers();
            rx.recv().unwrap(); // the reader is done
            (n, chan.close())
        });
        let r = Readers::open(tmp.path().join("late"), Some(Duration::from_secs(60))).unwrap();
        let got = r.len();
        drop(r);
        tx.send(()).unwrap();
        let (n, closed) = producer.join().unwrap();
        closed.unwrap();
        assert_eq!(got, n);
    });
}

#[test]
fn a_channel_not_there_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in [tmp.path().join("missing"), tmp.path().to_path_buf()] {
        let e = Readers::open(&dir, Some(Duration::from_millis(20))).unwrap_err();
        assert!(matches!(e, ChannelError::NotFound { .. }), "{e:?}");
        let msg = common::chain(&e);
        assert!(
            msg.contains("cpu0") && msg.contains("did not appear"),
            "{msg}"
        );
    }
}

/// Copies buffer file `from` to `to`, with its header saying buffer `cpu`
/// of a channel of `n` buffers.
fn copy_buffer(from: &Path, to: &Path, cpu: u64, n: u64) {
    let mut b = std::fs::read(from).unwrap();
    b[56..64].copy_from_slice(&cpu.to_ne_bytes());
    b[120..128].copy_from_slice(&n.to_ne_bytes());
    std::fs::write(to, b).unwrap();
}

#[test]
fn buffers_of_two_channels_or_a_missing_one_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mk = |name: &str| {
        std::fs::create_dir(tmp.path().join(name)).unwrap();
        Channel::builder(name)
            .dir(tmp.path().join(name))
            .subbuf_size(256)
            .n_subbufs(2)
            .global(true)
            .open()
            .unwrap()
    };
    let (a, b) = (mk("a"), mk("b"));
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    copy_buffer(a.buffer_path(0), &mixed.join("cpu0"), 0, 2);
    // Only cpu0, which says there are two: one is missing.
    let e = Readers::open(&mixed, Some(Duration::from_millis(20))).unwrap_err();
    assert!(
        matches!(&e, ChannelError::Missing { path, n_buffers: 2 } if path.ends_with("cpu1")),
        "{e:?}"
    );
    copy_buffer(b.buffer_path(0), &mixed.join("cpu1"), 1, 2);
    let e = Readers::open(&mixed, Some(Duration::from_millis(20))).unwrap_err();
    let ChannelError::Mixed {
        path,
        found,
        expected,
        ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert!(path.ends_with("cpu1"));
    assert_eq!(*expected, a.open_readers().unwrap().channel_id());
    assert_eq!(*found, b.open_readers().unwrap().channel_id());
    assert!(common::chain(&e).contains("another channel"));
    // The same channel's two buffers: accepted.
    copy_buffer(a.buffer_path(0), &mixed.join("cpu1"), 1, 2);
    assert_eq!(Readers::open(&mixed, None).unwrap().len(), 2);
    // A buffer under another's name: refused.
    copy_buffer(a.buffer_path(0), &mixed.join("cpu1"), 0, 2);
    let e = Readers::open(&mixed, None).unwrap_err();
    assert!(
        matches!(
            e,
            ChannelError::WrongCpu {
                cpu: 0,
                expected: 1,
                ..
            }
        ),
        "{e:?}"
    );
    // Not a buffer file: the reader's own error, naming it.
    std::fs::write(mixed.join("cpu1"), vec![0u8; 8192]).unwrap();
    let e = Readers::open(&mixed, None).unwrap_err();
    assert!(
        matches!(e, ChannelError::Read(relayfs::ReadError::Format { .. })),
        "{e:?}"
    );
    a.close().unwrap();
    b.close().unwrap();
}

#[test]
fn a_symlinked_or_insecure_channel_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let chan = Channel::builder("c")
        .dir(&real)
        .subbuf_size(256)
        .n_subbufs(2)
        .global(true)
        .open()
        .unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = Readers::open(&link, Some(Duration::from_secs(5))).unwrap_err();
    assert!(
        matches!(
            &e,
            ChannelError::Dir {
                source: OpenError::Symlink(_),
                ..
            }
        ),
        "{e:?}"
    );
    let msg = common::chain(&e);
    assert_eq!(msg.matches(link.to_str().unwrap()).count(), 1, "{msg}");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = Readers::open(&real, Some(Duration::from_secs(5))).unwrap_err();
    assert!(
        matches!(
            &e,
            ChannelError::Dir {
                source: OpenError::Insecure { .. },
                ..
            }
        ),
        "{e:?}"
    );
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(Readers::open(&real, None).unwrap().len(), 1);
    chan.close().unwrap();
}

/// The example program `name`, which `cargo test` builds beside the tests;
/// `None` (and a note) if it was not built (`cargo test --test ...`).
pub fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent()?.parent()?.join("examples").join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: example {name} not built (cargo test builds it unless a --test filter is given)");
        None
    }
}

#[test]
fn example_channel_reader_drains_every_buffer_into_its_file() {
    let Some(bin) = example("channel_reader") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // Started first: it waits for the channel.
    let child = Command::new(bin)
        .args(["ex".as_ref(), out.as_os_str(), "60".as_ref()])
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
    let mut want = vec![Vec::new(); chan.n_buffers()];
    for i in 0..2000u64 {
        let cpu = (i as usize) % chan.n_buffers();
        let r = rec(cpu as u64, i);
        if chan.write_cpu(cpu, &r).is_ok() {
            want[cpu].extend_from_slice(&r);
        }
    }
    chan.close().unwrap();
    let got = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&got.stdout);
    assert!(got.status.success(), "{stdout}");
    for (cpu, w) in want.iter().enumerate() {
        let f = std::fs::read(out.join(format!("cpu{cpu}.out"))).unwrap();
        assert!(f == *w, "cpu{cpu}.out differs from what was written");
        assert!(
            stdout.contains(&format!("cpu{cpu}.out: {} bytes", w.len())),
            "{stdout}"
        );
    }
}

#[test]
fn example_overwrite_keeps_the_last_events() {
    let Some(bin) = example("overwrite") else {
        return;
    };
    let got = Command::new(bin).arg("30000").output().unwrap();
    let stdout = String::from_utf8_lossy(&got.stdout);
    assert!(got.status.success(), "{stdout}");
    let num = |key: &str| -> u64 {
        let line = stdout.lines().find(|l| l.starts_with(key)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (first, last, kept) = (
        num("first kept: event"),
        num("last kept: event"),
        num("wrote 30000 events; the buffer kept the last"),
    );
    assert_eq!(last, 29999, "{stdout}");
    assert!(first > 0, "the oldest events were overwritten: {stdout}");
    assert_eq!(last - first + 1, kept, "no gap in what was kept: {stdout}");
}

#[test]
fn example_latency_measures_every_record() {
    let Some(bin) = example("latency") else {
        return;
    };
    let got = Command::new(bin)
        .args(["4096", "2000", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&got.stdout);
    assert!(got.status.success(), "{stdout}");
    // Paced, with a buffer far larger than the reader can fall behind by in
    // a second... unless the machine stalls: then the drops are counted.
    let delivered: u64 = stdout
        .split('(')
        .next_back()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        delivered <= 2000 && stdout.contains("of 2000 records delivered"),
        "{stdout}"
    );
    let ms = |key: &str| -> f64 {
        let at = stdout.find(key).unwrap_or_else(|| panic!("{stdout}")) + key.len();
        stdout[at..].split(' ').next().unwrap().parse().unwrap()
    };
    let (median, p90, max) = (ms("median "), ms("p90 "), ms("max "));
    assert!(median <= p90 && p90 <= max, "{stdout}");
}
