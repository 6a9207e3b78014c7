//! Hostile readers, permissions and bad parents.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use relayfs::{Channel, Mode, WriteError};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted for one test (needs root), unmounted on drop. `None`
/// (with the reason printed) where it can't be had.
struct Tmpfs {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(opts: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("skipped: needs root to mount a tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here");
            return None;
        }
        Some(Tmpfs {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

/// A reader may write anything into its reader page: the producer keeps
/// writing, never crashes or hangs, and its own counters stay exact.
#[test]
fn hostile_reader_page_cannot_break_the_producer() {
    for mode in [Mode::NoOverwrite, Mode::Overwrite] {
        let dir = tempfile::tempdir().unwrap();
        let chan = Arc::new(
            Channel::builder("h")
                .dir(dir.path())
                .subbuf_size(256)
                .n_subbufs(4)
                .mode(mode)
                .global(true)
                .open()
                .unwrap(),
        );
        let g = chan.geometry();
        let stop = Arc::new(AtomicBool::new(false));
        let path = chan.buffer_path(0).to_path_buf();
        let scribbler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                let mut x = 0x9E37_79B9_7F4A_7C15u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = g.reader_offset + (x % (g.reader_len / 8)) * 8;
                    let val = match x % 4 {
                        0 => 0,
                        1 => u64::MAX,
                        2 => x >> 40,
                        _ => x,
                    };
                    f.seek(SeekFrom::Start(off)).unwrap();
                    f.write_all(&val.to_ne_bytes()).unwrap();
                }
            })
        };
        let (mut ok, mut full) = (0u64, 0u64);
        for i in 0..200_000u64 {
            match chan.write(&i.to_le_bytes()[..1 + (i % 8) as usize]) {
                Ok(()) => ok += 1,
                Err(WriteError::Full) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        chan.flush();
        stop.store(true, Ordering::Relaxed);
        scribbler.join().unwrap();
        let s = chan.total_stats();
        assert_eq!(s.records_completed, ok, "{mode:?} {s:?}");
        assert_eq!(s.dropped_full, full, "{mode:?}");
        assert_eq!(s.dropped_toobig, 0);
    }
}

/// Set in the process of its own that `files_are_owner_only_unless_asked`
/// runs in.
const OWN_PROCESS: &str = "RELAYFS_TEST_OWN_PROCESS";

#[test]
fn files_are_owner_only_unless_asked() {
    // The channels go where RELAYFS_DIR says, and the library reads it from
    // the environment: this test runs again in a process of its own with it
    // set (changing the environment beside the harness's other threads is
    // unsound).
    if std::env::var_os(OWN_PROCESS).is_none() {
        let root = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "files_are_owner_only_unless_asked",
                "--test-threads=1",
            ])
            .env("RELAYFS_DIR", root.path())
            .env(OWN_PROCESS, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let c = Channel::builder("perm").open().unwrap();
    let root = std::env::var_os("RELAYFS_DIR").unwrap();
    assert_eq!(c.dir(), std::path::Path::new(&root).join("perm"));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(c.dir()), 0o700);
    assert_eq!(mode(c.buffer_path(0)), 0o600);
    drop(c);
    let c = Channel::builder("group").file_mode(0o646).open().unwrap();
    assert_eq!(mode(c.dir()), 0o755);
    assert_eq!(mode(c.buffer_path(0)), 0o644, "never world-writable");
    drop(c);
    let c = Channel::builder("grouponly")
        .file_mode(0o640)
        .open()
        .unwrap();
    assert_eq!(mode(c.dir()), 0o750);
    assert_eq!(mode(c.buffer_path(0)), 0o640);
}

#[test]
fn reader_without_permission_gets_a_clear_error() {
    if !is_root() {
        eprintln!("skipped: needs root to drop to another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = Channel::builder("p")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(2)
        .open()
        .unwrap();
    let path = c.buffer_path(0).to_path_buf();
    // A child running as nobody tries to open the relay file.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "open_as_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RELAYFS_TEST_OPEN", &path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("open error:"), "{text}");
    assert!(text.contains("Permission denied"), "{text}");
}

use std::os::unix::process::CommandExt;

mod common;
use common::chain;

#[test]
fn open_as_child() {
    let Ok(p) = std::env::var("RELAYFS_TEST_OPEN") else {
        return;
    };
    match relayfs::RelayFile::open(&p) {
        Ok(_) => println!("opened"),
        Err(e) => println!("open error: {}", chain(&e)),
    }
}

#[test]
fn unwritable_parent_is_a_clear_error() {
    let Some(fs) = Tmpfs::mount("ro,size=1m") else {
        return;
    };
    let e = Channel::builder("ro")
        .dir(&fs.path)
        .subbuf_size(4096)
        .n_subbufs(2)
        .open()
        .unwrap_err();
    let e = chain(&e);
    assert!(e.contains("Read-only file system"), "{e}");
}

#[test]
fn full_shm_fails_at_open_not_with_sigbus() {
    let Some(fs) = Tmpfs::mount("size=256k") else {
        return;
    };
    let e = Channel::builder("big")
        .dir(&fs.path)
        .subbuf_size(1 << 20)
        .n_subbufs(4)
        .open();
    match e {
        Err(relayfs::OpenError::NoSpace { .. }) => {}
        other => panic!("{other:?}"),
    }
    let left: Vec<_> = std::fs::read_dir(&fs.path).unwrap().collect();
    assert!(
        left.is_empty(),
        "a failed open leaves nothing behind: {left:?}"
    );
}

#[test]
fn truncated_under_the_reader_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let c = Channel::builder("t")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(4)
        .global(true)
        .open()
        .unwrap();
    c.write(&[1u8; 100]).unwrap();
    let mut r = relayfs::RelayFile::open(c.buffer_path(0)).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.buffer_path(0))
        .unwrap();
    f.set_len(8192).unwrap();
    let mut buf = [0u8; 200];
    let e = chain(&r.read(&mut buf).unwrap_err());
    assert!(e.contains("truncated"), "{e}");
    let e = chain(
        &r.poll(Some(std::time::Duration::from_millis(10)))
            .unwrap_err(),
    );
    assert!(e.contains("truncated"), "{e}");
    std::mem::forget(c); // its mapping is past the end now: don't flush into it
}
