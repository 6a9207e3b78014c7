//! Channels on hostile ground: the relay directory and channel directories
//! live in shared places (`/dev/shm`), where another user may have put
//! symbolic links, directories and files of their own. A producer (root,
//! say) must not follow them, must not use directories others control, must
//! not delete what is not its own, and readers must never see a half-made
//! buffer.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use relayfs::{Channel, ChannelDir, DefaultCallbacks, OpenError, ReadError, RelayFile};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether a test that needs root can run; says so loudly when not, and
/// fails under CI, which runs as root.
fn need_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test needs root, and CI runs as root"
    );
    eprintln!("skipped: needs root");
    false
}

fn small(name: &str) -> relayfs::ChannelBuilder {
    Channel::builder(name).subbuf_size(4096).n_subbufs(2)
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

/// Names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_symlinked_channel_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let precious = target.path().join("cpu0");
    std::fs::write(&precious, b"precious").unwrap();
    std::os::unix::fs::symlink(target.path(), root.path().join("victim")).unwrap();
    let e = small("victim").relay_dir(root.path()).open().unwrap_err();
    assert!(matches!(e, OpenError::Symlink(_)), "{e:?}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    // Nothing created, nothing removed behind the link.
    assert_eq!(std::fs::read(&precious).unwrap(), b"precious");
    assert_eq!(names(target.path()), ["cpu0"]);
    // The same through ChannelBuilder::dir.
    let e = small("x")
        .dir(root.path().join("victim"))
        .open()
        .unwrap_err();
    assert!(matches!(e, OpenError::Symlink(_)), "{e:?}");
    assert_eq!(names(target.path()), ["cpu0"]);
    // A symlinked relay directory too.
    let link = target.path().join("rootlink");
    std::os::unix::fs::symlink(root.path(), &link).unwrap();
    let e = small("c").relay_dir(&link).open().unwrap_err();
    assert!(matches!(e, OpenError::Symlink(_)), "{e:?}");
}

#[test]
fn a_symlink_named_like_a_buffer_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("secret");
    std::fs::write(&target, b"secret").unwrap();
    let link = dir.path().join("cpu0");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = small("c").dir(dir.path()).open().unwrap_err();
    match &e {
        OpenError::NotOurs { path, reason } => {
            assert_eq!(path, &link);
            assert!(reason.contains("symbolic link"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    assert!(e.to_string().contains("cpu0"), "{e}");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"secret");
    assert_eq!(names(dir.path()), ["cpu0"]);

    // In a FIFO's place as well.
    std::fs::remove_file(&link).unwrap();
    let fifo_link = dir.path().join(".cpu0.wake");
    std::os::unix::fs::symlink(&target, &fifo_link).unwrap();
    let e = small("c").dir(dir.path()).open().unwrap_err();
    assert!(
        matches!(&e, OpenError::NotOurs { path, .. } if path == &fifo_link),
        "{e:?}"
    );
    assert!(std::fs::symlink_metadata(&fifo_link).unwrap().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"secret");
}

#[test]
fn a_file_that_is_not_a_buffer_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cpu0");
    std::fs::write(&f, vec![7u8; 5000]).unwrap();
    let e = small("c").dir(dir.path()).open().unwrap_err();
    match &e {
        OpenError::NotOurs { path, reason } => {
            assert_eq!(path, &f);
            assert!(reason.contains("header"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(std::fs::read(&f).unwrap(), vec![7u8; 5000]);
    // A regular file where the wakeup FIFO goes is not ours either.
    std::fs::remove_file(&f).unwrap();
    let w = dir.path().join(".cpu0.wake");
    std::fs::write(&w, b"mine").unwrap();
    let e = small("c").dir(dir.path()).open().unwrap_err();
    assert!(
        matches!(&e, OpenError::NotOurs { path, .. } if path == &w),
        "{e:?}"
    );
    assert_eq!(std::fs::read(&w).unwrap(), b"mine");
}

#[test]
fn stale_buffers_of_ours_are_still_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let chan = small("c").dir(dir.path()).open().unwrap();
    let keep = tempfile::tempdir().unwrap();
    let copy = keep.path().join("cpu0");
    std::fs::copy(chan.buffer_path(0), &copy).unwrap();
    let old_id = RelayFile::peek_header(&copy).unwrap().channel_id;
    chan.close().unwrap();
    // A dead producer's buffer (a valid header, nobody holding it) and a
    // hidden file of a buffer never published.
    std::fs::copy(&copy, dir.path().join("cpu0")).unwrap();
    let leftover = dir.path().join(".cpu0.new-1-0");
    std::fs::write(&leftover, b"half made").unwrap();
    let chan = small("c").dir(dir.path()).open().unwrap();
    let h = RelayFile::peek_header(chan.buffer_path(0)).unwrap();
    assert_ne!(h.channel_id, old_id);
    assert!(!leftover.exists(), "the leftover is ours and is removed");
    chan.close().unwrap();
}

#[test]
fn a_relay_directory_owned_by_another_user_is_refused() {
    if !need_root() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    chown(root.path(), 65534);
    let e = small("c").relay_dir(root.path()).open().unwrap_err();
    match &e {
        OpenError::ForeignOwner { owner, .. } => assert_eq!(*owner, 65534),
        e => panic!("{e:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("65534") && msg.contains("RELAYFS_DIR"),
        "{msg}"
    );
    assert!(names(root.path()).is_empty(), "nothing made in it");

    // A channel directory of another user under our relay directory.
    let root = tempfile::tempdir().unwrap();
    let chan = root.path().join("c");
    std::fs::create_dir(&chan).unwrap();
    chown(&chan, 65534);
    let e = small("c").relay_dir(root.path()).open().unwrap_err();
    assert!(matches!(e, OpenError::ForeignOwner { .. }), "{e:?}");
    let e = small("c").dir(&chan).open().unwrap_err();
    assert!(matches!(e, OpenError::ForeignOwner { .. }), "{e:?}");
    assert!(names(&chan).is_empty());
}

#[test]
fn a_buffer_of_another_user_is_not_deleted() {
    if !need_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keep = tempfile::tempdir().unwrap();
    let copy = keep.path().join("b");
    {
        let chan = small("c").dir(dir.path()).open().unwrap();
        std::fs::copy(chan.buffer_path(0), &copy).unwrap();
    }
    // A valid buffer header, but another user's file.
    let theirs = dir.path().join("cpu0");
    std::fs::copy(&copy, &theirs).unwrap();
    chown(&theirs, 65534);
    let e = small("c").dir(dir.path()).open().unwrap_err();
    match &e {
        OpenError::NotOurs { path, reason } => {
            assert_eq!(path, &theirs);
            assert!(reason.contains("65534"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), 65534);
}

#[test]
fn a_directory_others_may_write_is_refused_unless_sticky() {
    let root = tempfile::tempdir().unwrap();
    chmod(root.path(), 0o775);
    let e = small("c").relay_dir(root.path()).open().unwrap_err();
    match &e {
        OpenError::Insecure { mode, .. } => assert_eq!(*mode, 0o775),
        e => panic!("{e:?}"),
    }
    assert!(e.to_string().contains("sticky"), "{e}");
    assert!(names(root.path()).is_empty());
    let e = small("c").dir(root.path()).open().unwrap_err();
    assert!(matches!(e, OpenError::Insecure { .. }), "{e:?}");
    // Sticky, as /dev/shm and /tmp are: others can't remove or rename our
    // files there.
    chmod(root.path(), 0o1777);
    let chan = small("c").relay_dir(root.path()).open().unwrap();
    chan.close().unwrap();
}

#[test]
fn no_directory_is_left_behind_by_a_close_or_a_failed_open() {
    let root = tempfile::tempdir().unwrap();
    let chan = small("c").relay_dir(root.path()).open().unwrap();
    assert_eq!(chan.dir(), root.path().join("c"));
    chan.close().unwrap();
    assert!(names(root.path()).is_empty(), "{:?}", names(root.path()));
    // Dropped rather than closed.
    drop(small("c").relay_dir(root.path()).open().unwrap());
    assert!(names(root.path()).is_empty(), "{:?}", names(root.path()));

    // Failed opens: a bad argument, a failing create_buf_file.
    assert!(Channel::builder("c")
        .relay_dir(root.path())
        .subbuf_size(3000)
        .open()
        .is_err());
    assert!(names(root.path()).is_empty(), "{:?}", names(root.path()));
    struct Failing;
    impl relayfs::Callbacks for Failing {
        fn create_buf_file(
            &self,
            dir: &ChannelDir,
            filename: &str,
            mode: u32,
            is_global: &mut bool,
        ) -> std::io::Result<relayfs::UnpublishedFile> {
            if filename != "cpu0" {
                return Err(std::io::Error::other("refused"));
            }
            DefaultCallbacks.create_buf_file(dir, filename, mode, is_global)
        }
    }
    let r = small("c")
        .relay_dir(root.path())
        .callbacks(Failing)
        .global(true)
        .open();
    // One global buffer: cpu0 only, which works.
    r.unwrap().close().unwrap();
    assert!(names(root.path()).is_empty());
    let r = small("c")
        .relay_dir(root.path())
        .callbacks(Failing)
        .base("x")
        .open();
    assert!(r.is_err());
    assert!(names(root.path()).is_empty(), "{:?}", names(root.path()));

    // A directory that was there before, with something of the user's in
    // it, stays; so does one passed with dir().
    let pre = root.path().join("kept");
    std::fs::create_dir(&pre).unwrap();
    std::fs::write(pre.join("notes"), b"x").unwrap();
    small("kept")
        .relay_dir(root.path())
        .open()
        .unwrap()
        .close()
        .unwrap();
    assert_eq!(names(&pre), ["notes"]);
    let own = tempfile::tempdir().unwrap();
    small("c").dir(own.path()).open().unwrap().close().unwrap();
    assert!(own.path().is_dir());
    assert!(names(own.path()).is_empty());
}

#[test]
fn readers_refuse_symlinks_and_files_that_are_not_regular() {
    let dir = tempfile::tempdir().unwrap();
    let chan = small("c").dir(dir.path()).global(true).open().unwrap();
    let other = tempfile::tempdir().unwrap();
    let link = other.path().join("link");
    std::os::unix::fs::symlink(chan.buffer_path(0), &link).unwrap();
    let is_link = |e: ReadError| matches!(e, ReadError::NotRegular { kind, .. } if kind.contains("symbolic link"));
    assert!(is_link(RelayFile::open(&link).unwrap_err()));
    assert!(is_link(RelayFile::inspect(&link).unwrap_err()));
    assert!(is_link(RelayFile::peek_header(&link).unwrap_err()));
    assert!(RelayFile::holders(&link).is_err());
    // A FIFO in a buffer's place: refused at once, not a hang.
    let fifo = other.path().join("cpu0");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let e = RelayFile::open(&fifo).unwrap_err();
    assert!(
        matches!(e, ReadError::NotRegular { kind: "a FIFO", .. }),
        "{e:?}"
    );
    assert!(RelayFile::inspect(&fifo).is_err());
    // A directory.
    let e = RelayFile::open(other.path()).unwrap_err();
    assert!(
        matches!(e, ReadError::NotRegular { .. } | ReadError::Io { .. }),
        "{e:?}"
    );
    // The real file opens.
    RelayFile::open(chan.buffer_path(0)).unwrap();
}

/// A reader that waits for `cpu0` to appear and opens it must find it whole
/// (header written) with every buffer its header counts already there: the
/// files are published whole, `cpu0` last.
#[test]
fn a_reader_never_sees_a_half_made_buffer() {
    for round in 0..10 {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("race");
        let cpu0 = dir.join("cpu0");
        let reader = std::thread::spawn(move || {
            let t = Instant::now();
            loop {
                assert!(t.elapsed() < Duration::from_secs(60), "cpu0 never came");
                match RelayFile::open(&cpu0) {
                    Ok(f) => {
                        let n = f.header().n_buffers;
                        for i in 0..n {
                            let p = dir.join(format!("cpu{i}"));
                            assert!(p.exists(), "{} missing when cpu0 is there", p.display());
                            let w = dir.join(format!(".cpu{i}.wake"));
                            assert!(w.exists(), "{} missing", w.display());
                        }
                        return n;
                    }
                    Err(ReadError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("round {round}: a half-made buffer: {e:?}"),
                }
                std::thread::yield_now();
            }
        });
        // Large enough that allocating a buffer takes a while.
        let chan = Channel::builder("race")
            .relay_dir(root.path())
            .subbuf_size(1 << 20)
            .n_subbufs(8)
            .open()
            .unwrap();
        let n = reader.join().unwrap();
        assert_eq!(n, chan.n_buffers() as u64);
        chan.close().unwrap();
    }
}

/// `create_buf_file` that makes the file under another name than asked.
#[derive(Debug)]
struct WrongName;

impl relayfs::Callbacks for WrongName {
    fn create_buf_file(
        &self,
        dir: &relayfs::ChannelDir,
        filename: &str,
        mode: u32,
        _is_global: &mut bool,
    ) -> std::io::Result<relayfs::UnpublishedFile> {
        dir.create_unpublished(&format!("{filename}x"), mode)
    }
}

#[test]
fn a_buffer_made_but_not_set_up_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let e = relayfs::Channel::builder("w")
        .dir(dir.path())
        .subbuf_size(4096)
        .n_subbufs(2)
        .callbacks(WrongName)
        .open()
        .unwrap_err();
    assert!(e.to_string().contains("create buffer file"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
