//! `record --to nats:// --spool DIR`: sub-buffers kept on local disk while
//! the broker is down or slow, and sent from there later.
//!
//! Each buffer has a directory, `DIR/<host>/<channel>/<buffer>/`, holding
//! one file per sub-buffer, `<seq>.sb` (the sequence number in 20 digits):
//! a line of JSON ([`Entry`]) and the sub-buffer's data. A file is written
//! under a temporary name, synced and renamed into place (and the directory
//! synced) before the sub-buffer is consumed from the relay buffer, so that
//! a recorder killed at any point leaves each sub-buffer in the relay
//! buffer, in the spool, or both (then sent twice with one message id:
//! stored once). Files are removed once JetStream acknowledged them.
//! Only names of that form are ever removed, files are opened without
//! following symbolic links, and the directories must be the user's own.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use relayfs::PeekedSubbuf;
use serde::{Deserialize, Serialize};

use crate::natsio::{self, WireStats};

/// What a spool file says of its sub-buffer, on its first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    records: u64,
    offset: u64,
    partial: bool,
    bytes: u64,
    stats: WireStats,
}

/// A sub-buffer read ahead ([`PeekedSubbuf`]), its data shareable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sub {
    pub(crate) seq: u64,
    pub(crate) records: u64,
    pub(crate) offset: u64,
    pub(crate) partial: bool,
    pub(crate) data: Bytes,
}

impl From<PeekedSubbuf> for Sub {
    fn from(p: PeekedSubbuf) -> Sub {
        Sub {
            seq: p.seq,
            records: p.records,
            offset: p.offset,
            partial: p.partial,
            data: Bytes::from(p.data),
        }
    }
}

/// One buffer's spool directory.
pub(crate) struct BufSpool {
    dir: PathBuf,
    /// Bytes in every buffer's spool, and the most allowed.
    used: &'static AtomicU64,
    max: u64,
}

/// A spool file's name for `seq`.
fn name(seq: u64) -> String {
    format!("{seq:020}.sb")
}

/// The sequence number a spool file's name says, if it is one.
fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".sb")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Makes `dir` (mode 0700) if missing, and checks that it is a directory of
/// ours, not a symbolic link.
fn own_dir(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let m = fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if !m.file_type().is_dir() {
        bail!(
            "spool {}: not a directory (a symbolic link, or a file): refused",
            dir.display()
        );
    }
    let euid = rustix::process::geteuid().as_raw();
    if m.uid() != euid {
        bail!(
            "spool {}: belongs to uid {}, not to you (uid {euid}): refused",
            dir.display(),
            m.uid()
        );
    }
    Ok(())
}

impl BufSpool {
    /// The spool of one buffer under `root`, made if missing; `used` counts
    /// the bytes of every buffer's spool (those already there included).
    pub(crate) fn open(
        root: &Path,
        host: &str,
        channel: &str,
        buffer: &str,
        max: u64,
        used: &'static AtomicU64,
    ) -> Result<BufSpool> {
        let mut dir = root.to_path_buf();
        own_dir(&dir)?;
        for part in [host, channel, buffer] {
            dir.push(natsio::token(part));
            own_dir(&dir)?;
        }
        let s = BufSpool { dir, used, max };
        let mut bytes = 0;
        for seq in s.list()? {
            bytes += fs::symlink_metadata(s.dir.join(name(seq)))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        // SYNC POINT: Relaxed: a byte count shared by the buffers' tasks,
        // which run on one thread; it orders nothing.
        used.fetch_add(bytes, Ordering::Relaxed);
        Ok(s)
    }

    /// The sequence numbers in the spool, in order.
    pub(crate) fn list(&self) -> Result<Vec<u64>> {
        let mut v = Vec::new();
        for e in fs::read_dir(&self.dir).with_context(|| format!("{}", self.dir.display()))? {
            let e = e?;
            if let Some(seq) = e.file_name().to_str().and_then(seq_of) {
                if e.file_type()?.is_file() {
                    v.push(seq);
                }
            }
        }
        v.sort_unstable();
        Ok(v)
    }

    /// Keeps a peeked sub-buffer on disk, synced; `false` (nothing
    /// written) if that would pass `--spool-max`.
    pub(crate) fn write(&self, p: &Sub, stats: WireStats) -> Result<bool> {
        let entry = Entry {
            seq: p.seq,
            records: p.records,
            offset: p.offset,
            partial: p.partial,
            bytes: p.data.len() as u64,
            stats,
        };
        let mut head = serde_json::to_vec(&entry)?;
        head.push(b'\n');
        let size = (head.len() + p.data.len()) as u64;
        // SYNC POINT: Relaxed, as in `open`.
        if self.used.load(Ordering::Relaxed) + size > self.max {
            return Ok(false);
        }
        let tmp = self.dir.join(format!(".{}.tmp", p.seq));
        // A temporary file a killed recorder left: ours, a regular file.
        if fs::symlink_metadata(&tmp).is_ok_and(|m| m.file_type().is_file()) {
            fs::remove_file(&tmp).ok();
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(&head)
            .and_then(|()| f.write_all(&p.data))
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, self.dir.join(name(p.seq)))
            .with_context(|| format!("cannot rename {}", tmp.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", self.dir.display()))?;
        // SYNC POINT: Relaxed, as in `open`.
        self.used.fetch_add(size, Ordering::Relaxed);
        Ok(true)
    }

    /// A spooled sub-buffer, as it was peeked, and the counters then.
    pub(crate) fn load(&self, seq: u64) -> Result<(Sub, WireStats)> {
        let path = self.dir.join(name(seq));
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut all = Vec::new();
        f.read_to_end(&mut all)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let nl = all
            .iter()
            .position(|&b| b == b'\n')
            .with_context(|| format!("{}: not a spool file", path.display()))?;
        let e: Entry = serde_json::from_slice(&all[..nl])
            .with_context(|| format!("{}: not a spool file", path.display()))?;
        let data = all.split_off(nl + 1);
        if e.seq != seq || e.bytes != data.len() as u64 {
            bail!(
                "{}: spool file damaged (sequence {} for {seq}, {} bytes of {})",
                path.display(),
                e.seq,
                data.len(),
                e.bytes
            );
        }
        Ok((
            Sub {
                seq,
                data: data.into(),
                offset: e.offset,
                records: e.records,
                partial: e.partial,
            },
            e.stats,
        ))
    }

    /// Removes sub-buffer `seq` from the spool (JetStream has it). It may
    /// be gone already: a recorder killed after spooling a sub-buffer and
    /// before consuming it leaves it in the spool and in the relay buffer,
    /// and the next one may send (and spool) both copies; the first
    /// acknowledged removes the file.
    pub(crate) fn remove(&self, seq: u64) -> Result<()> {
        let path = self.dir.join(name(seq));
        let len = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
        // SYNC POINT: Relaxed, as in `open`.
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(len))
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_buffers_come_back_as_they_went_in_and_the_bound_holds() {
        static USED: AtomicU64 = AtomicU64::new(0);
        let tmp = tempfile::tempdir().unwrap();
        let s = BufSpool::open(tmp.path(), "h.1", "c", "cpu0", 2000, &USED).unwrap();
        let p = Sub {
            seq: 7,
            data: vec![5; 1200].into(),
            offset: 0,
            records: 3,
            partial: false,
        };
        let stats = WireStats {
            dropped_full: 2,
            ..Default::default()
        };
        assert!(s.write(&p, stats).unwrap());
        assert!(
            !s.write(
                &Sub {
                    seq: 8,
                    ..p.clone()
                },
                stats
            )
            .unwrap(),
            "past --spool-max: refused"
        );
        assert_eq!(s.list().unwrap(), vec![7]);
        let (back, st) = s.load(7).unwrap();
        assert_eq!((back, st), (p, stats));
        // Another buffer's spool sees what is there.
        s.remove(7).unwrap();
        assert_eq!(USED.load(Ordering::Relaxed), 0);
        assert!(s.list().unwrap().is_empty());
        assert_eq!(seq_of("00000000000000000007.sb"), Some(7));
        assert_eq!(seq_of("7.sb"), None);
        assert_eq!(seq_of("../x.sb"), None);
    }

    #[test]
    fn a_sub_buffer_spooled_twice_is_removed_once_without_error() {
        // A recorder killed between spooling sub-buffer 3 and consuming it
        // leaves it in both places; the next one, the broker away, spools
        // the relay buffer's copy over the file, and both copies in flight
        // are acknowledged in turn: the second removal finds nothing.
        static USED: AtomicU64 = AtomicU64::new(0);
        let tmp = tempfile::tempdir().unwrap();
        let s = BufSpool::open(tmp.path(), "h", "c", "cpu0", 1 << 20, &USED).unwrap();
        let p = Sub {
            seq: 3,
            data: vec![1; 100].into(),
            offset: 0,
            records: 1,
            partial: false,
        };
        assert!(s.write(&p, WireStats::default()).unwrap());
        assert!(s.write(&p, WireStats::default()).unwrap());
        assert_eq!(s.list().unwrap(), vec![3]);
        s.remove(3).unwrap();
        s.remove(3).unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn a_symbolic_link_in_place_of_the_spool_is_refused() {
        static USED: AtomicU64 = AtomicU64::new(0);
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("h")).unwrap();
        let e = BufSpool::open(tmp.path(), "h", "c", "cpu0", 1 << 20, &USED)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("refused"), "{e:#}");
        assert!(fs::read_dir(&elsewhere).unwrap().next().is_none());
    }
}
