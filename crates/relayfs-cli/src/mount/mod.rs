//! `relayfs mount MOUNTPOINT`: the relay directory as a filesystem (FUSE)
//! whose buffer files behave like the kernel's relay files, so that any
//! program is a relay reader; `relayfs umount MOUNTPOINT`.
//!
//! Every buffer file is read through the library's `RelayFile` (one code
//! path): `open` takes the reader's place (`EBUSY` for a second), `read`
//! consumes, `poll` is woken by the producer's wakeup FIFO. See
//! docs/DESIGN.md, "The mount".

mod fs;
mod watch;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fuser::{Config, MountOption, SessionACL};

use crate::util;

/// How long the mount waits, once stopped, for readers to close their files
/// before it ends anyway.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Arguments of `relayfs mount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to mount (an existing directory)
    pub mountpoint: PathBuf,
    /// The relay directory to show (default: $RELAYFS_DIR, else
    /// /dev/shm/relayfs)
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Make `read` on a buffer file wait until data arrives or the channel
    /// ends (returning 0 only then), so that `cat cpu0 > out` records a live
    /// channel to its end; without it `read` returns 0 when nothing is
    /// ready, as the kernel's relay files do
    #[arg(long)]
    pub follow: bool,
    /// Return once mounted, leaving the filesystem to a background process
    #[arg(long)]
    pub daemon: bool,
    /// Let other users in (`allow_other`); the files' owners and modes,
    /// mirrored from the channel's, still decide who may read what. Needs
    /// root, or `user_allow_other` in /etc/fuse.conf
    #[arg(long)]
    pub allow_other: bool,
    /// The background process of `--daemon`: starts a session of its own
    #[arg(long, hide = true)]
    pub detached: bool,
}

/// Arguments of `relayfs umount`.
#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// The mount point of a `relayfs mount`
    pub mountpoint: PathBuf,
}

/// The mount table's entry for `mp` (canonical), if it is a mount point:
/// its filesystem type.
fn mounted_type(mp: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mp.to_str()?;
    let mut found = None;
    for line in table.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        // Octal escapes (`\040` for a space) as the kernel writes them.
        if f.get(4).map(|p| unescape(p)) == Some(want.to_string()) {
            found = f.get(dash + 1).map(|s| s.to_string());
        }
    }
    found
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks the mount point and `/dev/fuse`, with an error that says what to
/// do.
fn preflight(mp: &Path) -> Result<PathBuf> {
    let m = std::fs::metadata(mp).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!(
                "mount point {} does not exist: create it first (mkdir)",
                fs::shown(mp)
            )
        }
        std::io::ErrorKind::NotConnected => anyhow::anyhow!(
            "mount point {} is a relayfs mount whose process died: run `relayfs umount {}` first",
            fs::shown(mp),
            fs::shown(mp)
        ),
        _ => anyhow::anyhow!("mount point {}: {e}", fs::shown(mp)),
    })?;
    if !m.is_dir() {
        bail!("mount point {} is not a directory", fs::shown(mp));
    }
    let canon =
        std::fs::canonicalize(mp).with_context(|| format!("mount point {}", fs::shown(mp)))?;
    if let Some(t) = mounted_type(&canon) {
        bail!(
            "mount point {} is busy: something ({t}) is mounted there already{}",
            fs::shown(mp),
            if t.starts_with("fuse") {
                format!(" (unmount it with `relayfs umount {}`)", fs::shown(mp))
            } else {
                String::new()
            }
        );
    }
    match std::fs::metadata("/dev/fuse") {
        Ok(m) => {
            use std::os::unix::fs::PermissionsExt;
            let ok = rustix::fs::access(
                "/dev/fuse",
                rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
            )
            .is_ok();
            if !ok {
                bail!(
                    "/dev/fuse is not open to you (mode {:o}): it is usually 0666 \
                     (as root: chmod 0666 /dev/fuse), or mount as root",
                    m.permissions().mode() & 0o7777
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "/dev/fuse does not exist: load the kernel's FUSE module (`modprobe fuse`), \
             or in a container pass the device in (e.g. `--device /dev/fuse`); \
             non-root users also need fusermount3 (Debian: apt-get install fuse3)"
        ),
        Err(e) => bail!("/dev/fuse: {e}"),
    }
    Ok(canon)
}

/// Refuses a mount point inside the relay directory `root`, or one that
/// holds it: the mount would look at its own mount point (listing the relay
/// directory stats every entry, the mount point too) or reach the relay
/// directory through itself, and its one filesystem thread would wait for
/// itself: the mount hangs, and so, unkillably, does every reader (`ls` in
/// state D) until it is killed with SIGKILL.
fn check_apart(mp: &Path, root: &Path) -> Result<()> {
    // The relay directory may not exist yet: its absolute name, with the
    // longest part that exists resolved.
    let abs = std::path::absolute(root).with_context(|| fs::shown(root))?;
    let mut canon = abs.clone();
    let mut rest = Vec::new();
    let mut at = abs.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(at) {
            canon = rest.iter().rev().fold(c, |p: PathBuf, n| p.join(n));
            break;
        }
        match (at.parent(), at.file_name()) {
            (Some(p), Some(n)) => {
                rest.push(n.to_os_string());
                at = p;
            }
            _ => break,
        }
    }
    if canon.starts_with(mp) || mp.starts_with(&canon) {
        bail!(
            "mount point {} and relay directory {} overlap: the mount would read \
             itself and hang; mount it somewhere outside the relay directory",
            fs::shown(mp),
            fs::shown(&canon)
        );
    }
    Ok(())
}

/// Runs `relayfs mount`.
pub fn run(a: &Args) -> Result<i32> {
    if a.detached {
        // Out of the terminal's session: its hang-up and Ctrl-C are not ours.
        let _ = rustix::process::setsid();
    }
    let mp = preflight(&a.mountpoint)?;
    let root = a.dir.clone().unwrap_or_else(relayfs::relay_dir);
    check_apart(&mp, &root)?;
    if a.daemon {
        return daemon(a, &mp);
    }
    let watcher = watch::Watcher::start().context("cannot start the watcher thread")?;
    let stop = watcher.clone();
    let fs = fs::RelayFs::new(root.clone(), a.follow, watcher);
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("relayfs".into()),
        MountOption::Subtype("relayfs".into()),
        MountOption::DefaultPermissions,
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
    ];
    if a.allow_other {
        cfg.acl = SessionACL::All;
    }
    util::catch_interrupts();
    fs::watch_replies();
    let mut session = fuser::Session::new(fs, &mp, &cfg).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                " (not root: fusermount3 must be installed, and --allow-other needs \
                 user_allow_other in /etc/fuse.conf)"
            }
            Some(libc::ENOENT) => " (is fusermount3 installed? Debian: apt-get install fuse3)",
            _ => "",
        };
        anyhow::anyhow!("cannot mount {}: {e}{hint}", fs::shown(&mp))
    })?;
    let mut unmounter = session.unmount_callable();
    let loop_ = std::thread::Builder::new()
        .name("relayfs-fuse".into())
        .spawn(move || session.run())
        .context("cannot start the filesystem thread")?;
    util::errln!(
        "relayfs mount: {} on {} (stop with Ctrl-C or `relayfs umount {}`)",
        fs::shown(&root),
        fs::shown(&mp),
        fs::shown(&mp)
    );
    // Until a signal, or until someone else unmounted (the loop ends).
    while !util::interrupted() && !loop_.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !loop_.is_finished() {
        // Reads waiting for data (`--follow`) end now, with ENOTCONN:
        // otherwise their readers keep the filesystem, and this process,
        // alive until data comes.
        stop.stop();
        if let Err(e) = unmounter.unmount() {
            // Busy (a reader has a file open): detach it, the kernel ends
            // the rest when the last file is closed.
            util::errln!("relayfs mount: unmount: {e}; detaching");
            let _ = rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH);
        }
        // A reader that holds a file open without reading keeps the
        // detached filesystem: give readers a moment to close, then end
        // anyway (the connection goes with this process, and their next
        // call gets ENOTCONN; a read answered meanwhile is marked in flight
        // until its reply is written, so nothing is lost uncounted).
        let t = Instant::now();
        while !loop_.is_finished() && t.elapsed() < STOP_GRACE {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !loop_.is_finished() {
            util::errln!(
                "relayfs mount: a reader still has a file open on {}: ending anyway",
                fs::shown(&mp)
            );
            return Ok(0);
        }
    }
    match loop_.join() {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(anyhow::anyhow!("filesystem loop: {e}")),
        Err(_) => bail!("filesystem loop panicked"),
    }
}

/// `--daemon`: runs the mount in a process of its own (in a session of its
/// own, so the terminal's Ctrl-C and hang-up don't reach it) and returns once the
/// filesystem is mounted, or with its error.
fn daemon(a: &Args, mp: &Path) -> Result<i32> {
    let exe = std::env::current_exe().context("cannot find the relayfs executable")?;
    let mut c = Command::new(exe);
    c.arg("mount").arg("--detached").arg(mp);
    if let Some(d) = &a.dir {
        c.arg("--dir").arg(d);
    }
    if a.follow {
        c.arg("--follow");
    }
    if a.allow_other {
        c.arg("--allow-other");
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().context("cannot start the mount process")?;
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            let mut msg = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut msg);
            }
            bail!(
                "the mount process exited ({st}): {}",
                msg.trim().trim_start_matches("relayfs: error: ")
            );
        }
        if mounted_type(mp).is_some_and(|t| t.starts_with("fuse")) {
            // Its later messages go nowhere: closing our end makes its
            // writes fail quietly, never block.
            drop(child.stderr.take());
            util::outln!("{}", child.id())?;
            return Ok(0);
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            bail!(
                "the mount process did not mount {} within 30 s",
                fs::shown(mp)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `relayfs umount`.
pub fn umount(a: &UmountArgs) -> Result<i32> {
    let mp = &a.mountpoint;
    // A dead mount's directory can't be looked at (ENOTCONN): unmount by
    // the name given, made absolute.
    let abs = std::path::absolute(mp).with_context(|| fs::shown(mp))?;
    match rustix::mount::unmount(&abs, rustix::mount::UnmountFlags::empty()) {
        Ok(()) => return Ok(0),
        Err(rustix::io::Errno::PERM) => {}
        Err(rustix::io::Errno::INVAL) => bail!("{} is not a mount point", fs::shown(mp)),
        Err(rustix::io::Errno::BUSY) => bail!(
            "{} is busy: a reader has a file open there (close it, or detach with `umount -l`)",
            fs::shown(mp)
        ),
        Err(e) => bail!("cannot unmount {}: {e}", fs::shown(mp)),
    }
    // Not root: the setuid helper.
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&abs)
        .status()
        .context("cannot run fusermount3 (Debian: apt-get install fuse3)")?;
    if !st.success() {
        bail!("fusermount3 -u {} failed ({st})", fs::shown(mp));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_names_are_unescaped() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape(r"/end\04"), r"/end\04", "a cut escape stays");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn the_root_is_a_mount_point_and_a_fresh_directory_is_not() {
        assert!(mounted_type(Path::new("/")).is_some());
        let d = tempfile::tempdir().unwrap();
        let canon = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(mounted_type(&canon), None);
    }

    #[test]
    fn preflight_names_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let e = preflight(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let f = d.path().join("file");
        std::fs::write(&f, b"").unwrap();
        let e = preflight(&f).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn a_mount_point_and_relay_directory_that_overlap_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let top = std::fs::canonicalize(d.path()).unwrap();
        let relay = top.join("relay");
        std::fs::create_dir(&relay).unwrap();
        std::fs::create_dir(relay.join("view")).unwrap();
        std::fs::create_dir(top.join("mnt")).unwrap();
        for (mp, root) in [
            (relay.join("view"), relay.clone()),
            (top.clone(), relay.clone()),
            (relay.clone(), relay.clone()),
            // A relay directory not made yet, under the mount point.
            (top.clone(), top.join("later/relay")),
        ] {
            let e = check_apart(&mp, &root).unwrap_err().to_string();
            assert!(e.contains("overlap"), "{mp:?} {root:?}: {e}");
        }
        check_apart(&top.join("mnt"), &relay).unwrap();
        check_apart(&top.join("mnt"), &top.join("relay-not-yet")).unwrap();
        // "relay2" is not under "relay": whole names are compared.
        check_apart(&top.join("relay2"), &relay).unwrap();
    }
}
