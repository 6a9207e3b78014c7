//! Directories on shared ground: the relay root and channel directories are
//! opened without following symbolic links and checked (owner, mode) before
//! use; everything in them is then done relative to the directory's
//! descriptor (`openat`, `mkfifoat`, `linkat`, `renameat2`, `unlinkat`), so
//! nobody can redirect a producer to another file by swapping a path
//! component, and nothing is removed that is not proven to be ours.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, CWD};

use crate::error::OpenError;

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

/// Identity of a file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ident {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

impl Ident {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Ident {
        Ident {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// What an entry of a directory is, looked at without following it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryStat {
    pub kind: rustix::fs::FileType,
    pub uid: u32,
    pub ident: Ident,
}

impl EntryStat {
    /// The kind in words, for messages.
    pub(crate) fn kind_name(&self) -> &'static str {
        use rustix::fs::FileType as T;
        match self.kind {
            T::RegularFile => "a regular file",
            T::Directory => "a directory",
            T::Symlink => "a symbolic link",
            T::Fifo => "a FIFO",
            T::Socket => "a socket",
            T::CharacterDevice => "a character device",
            T::BlockDevice => "a block device",
            _ => "a file of unknown type",
        }
    }
}

fn open_dir_at(at: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<OwnedFd, OpenError> {
    rustix::fs::openat(at, name, DIR_FLAGS, Mode::empty()).map_err(|e| {
        // O_NOFOLLOW on a symbolic link: ELOOP, or ENOTDIR with O_DIRECTORY.
        let link = matches!(e, rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)
            && rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode as _)
                    == rustix::fs::FileType::Symlink
            });
        if link {
            OpenError::Symlink(path.to_path_buf())
        } else {
            OpenError::Io {
                what: "open directory",
                path: path.to_path_buf(),
                source: e.into(),
            }
        }
    })
}

/// Refuses a directory owned by someone else (other than root), or one that
/// others may write to without the sticky bit (they could replace our files
/// in it).
fn check_dir(fd: &OwnedFd, path: &Path) -> Result<std::fs::Metadata, OpenError> {
    let meta = File::from(fd.try_clone().map_err(|e| OpenError::Io {
        what: "open directory",
        path: path.to_path_buf(),
        source: e,
    })?)
    .metadata()
    .map_err(|e| OpenError::Io {
        what: "stat",
        path: path.to_path_buf(),
        source: e,
    })?;
    let me = euid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(OpenError::ForeignOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid: me,
        });
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
        return Err(OpenError::Insecure {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(meta)
}

/// The relay root (`$RELAYFS_DIR` or `/dev/shm/relayfs`), open.
#[derive(Debug)]
pub(crate) struct RelayRoot {
    fd: OwnedFd,
    path: PathBuf,
}

impl RelayRoot {
    /// Opens the relay root, creating it (mode 0755) if it is missing. Its
    /// last component must not be a symbolic link; its owner must be us or
    /// root; others may not write to it unless it is sticky.
    pub(crate) fn open_or_create(path: &Path) -> Result<RelayRoot, OpenError> {
        let fd = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                let pfd = rustix::fs::openat(
                    CWD,
                    parent,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| OpenError::Io {
                    what: "open directory",
                    path: parent.to_path_buf(),
                    source: e.into(),
                })?;
                let created = mkdir_at(pfd.as_fd(), name, 0o755, path)?;
                let fd = open_dir_at(pfd.as_fd(), name, path)?;
                if created {
                    set_mode(&fd, 0o755, path)?;
                }
                fd
            }
            // "/" or "..": nothing to create.
            _ => open_dir_at(CWD, path.as_os_str(), path)?,
        };
        check_dir(&fd, path)?;
        Ok(RelayRoot {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens (creating it with `mode` if missing) the channel directory
    /// `name` in the root. The returned `CreatedDir`, if any, says that this
    /// call made the directory.
    pub(crate) fn channel(
        &self,
        name: &str,
        mode: u32,
    ) -> Result<(ChannelDir, Option<CreatedDir>), OpenError> {
        let path = self.path.join(name);
        let created = mkdir_at(self.fd.as_fd(), OsStr::new(name), mode, &path)?;
        let fd = open_dir_at(self.fd.as_fd(), OsStr::new(name), &path)?;
        let made = if created {
            set_mode(&fd, mode, &path)?;
            let meta = File::from(fd.try_clone().map_err(|e| OpenError::Io {
                what: "open directory",
                path: path.clone(),
                source: e,
            })?)
            .metadata()
            .map_err(|e| OpenError::Io {
                what: "stat",
                path: path.clone(),
                source: e,
            })?;
            Some(CreatedDir {
                root: self.fd.try_clone().map_err(|e| OpenError::Io {
                    what: "open directory",
                    path: self.path.clone(),
                    source: e,
                })?,
                name: name.to_string(),
                ident: Ident::of(&meta),
            })
        } else {
            None
        };
        let dir = ChannelDir::checked(fd, path);
        match dir {
            Ok(d) => Ok((d, made)),
            Err(e) => {
                if let Some(m) = made {
                    m.remove();
                }
                Err(e)
            }
        }
    }
}

fn mkdir_at(at: BorrowedFd<'_>, name: &OsStr, mode: u32, path: &Path) -> Result<bool, OpenError> {
    match rustix::fs::mkdirat(at, name, Mode::from_raw_mode(mode)) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(e) => Err(OpenError::Io {
            what: "create directory",
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// The mode asked for, whatever the umask.
fn set_mode(fd: &OwnedFd, mode: u32, path: &Path) -> Result<(), OpenError> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(|e| OpenError::Io {
        what: "set permissions of",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// A channel directory this `relay_open` created: removed again at close,
/// or when the open fails, if it is still the same directory and empty.
#[derive(Debug)]
pub(crate) struct CreatedDir {
    root: OwnedFd,
    name: String,
    ident: Ident,
}

impl CreatedDir {
    /// The directory's device and inode.
    pub(crate) fn ident(&self) -> Ident {
        self.ident
    }

    /// Removes the directory if it is still the one created and is empty
    /// (`unlinkat(AT_REMOVEDIR)` fails on a directory that is not).
    pub(crate) fn remove(&self) {
        let same = stat_at(self.root.as_fd(), &self.name)
            .is_ok_and(|st| st.kind == rustix::fs::FileType::Directory && st.ident == self.ident);
        if same {
            let _ = rustix::fs::unlinkat(&self.root, self.name.as_str(), AtFlags::REMOVEDIR);
        }
    }
}

/// Removes a buffer file that `relay_close` left for its reader, now that
/// the reader `file` (open on `path`) drained it: the file if `path` still
/// names it, its wakeup FIFO if it is a FIFO of the file's owner, and the
/// channel directory `dir` (made by `relay_open`) if it is still that
/// directory and now empty. Best effort: whatever can't be proven to be
/// ours, or can't be removed (a reader of another user), stays.
// The field types of `struct stat` differ between architectures.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn remove_left_for_reader(
    path: &Path,
    file: &File,
    fifo_fd: Option<BorrowedFd<'_>>,
    dir: Option<Ident>,
) {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    let Ok(cd) = ChannelDir::open(parent) else {
        return;
    };
    let Ok(meta) = file.metadata() else {
        return;
    };
    if cd.unlink_if_same(name, Ident::of(&meta)).is_err() {
        return;
    }
    // The FIFO this reader has open, if it has; a FIFO of the file's owner
    // otherwise. Never one a later producer of the channel made meanwhile.
    let ours = fifo_fd
        .and_then(|fd| rustix::fs::fstat(fd).ok())
        .map(|st| Ident {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        });
    let fifo = format!(".{name}.wake");
    if cd.stat(&fifo).is_ok_and(|st| {
        st.kind == rustix::fs::FileType::Fifo
            && st.uid == meta.uid()
            && ours.is_none_or(|id| id == st.ident)
    }) {
        let _ = cd.unlink(&fifo);
    }
    let (Some(dir), Some(root), Some(dname)) = (
        dir,
        parent.parent(),
        parent.file_name().and_then(|n| n.to_str()),
    ) else {
        return;
    };
    let root = if root.as_os_str().is_empty() {
        Path::new(".")
    } else {
        root
    };
    let Ok(rfd) = rustix::fs::openat(CWD, root, DIR_FLAGS, Mode::empty()) else {
        return;
    };
    let same = stat_at(rfd.as_fd(), dname)
        .is_ok_and(|st| st.kind == rustix::fs::FileType::Directory && st.ident == dir);
    if same {
        // Fails, harmlessly, while other buffers' files are still there.
        let _ = rustix::fs::unlinkat(&rfd, dname, AtFlags::REMOVEDIR);
    }
}

/// Looks at entry `name` of directory `at` without following it.
// The field types of `struct stat` differ between architectures.
#[allow(clippy::unnecessary_cast)]
fn stat_at(at: BorrowedFd<'_>, name: &str) -> io::Result<EntryStat> {
    let st = rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(EntryStat {
        kind: rustix::fs::FileType::from_raw_mode(st.st_mode as _),
        uid: st.st_uid as u32,
        ident: Ident {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
        },
    })
}

/// An open channel directory: the buffer files and their wakeup FIFOs are
/// created, published and removed relative to it, never through a path
/// that could be redirected.
///
/// A custom [`Callbacks::create_buf_file`](crate::Callbacks::create_buf_file)
/// creates its file with [`create_unpublished`](Self::create_unpublished).
#[derive(Debug)]
pub struct ChannelDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for ChannelDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl ChannelDir {
    /// Opens a directory the caller named (`ChannelBuilder::dir`), without
    /// following a symbolic link in its last component, and checks it.
    pub(crate) fn open(path: &Path) -> Result<ChannelDir, OpenError> {
        let fd = open_dir_at(CWD, path.as_os_str(), path).map_err(|e| match e {
            OpenError::Io {
                path, source: e, ..
            } => OpenError::Io {
                what: "channel directory",
                path,
                source: e,
            },
            e => e,
        })?;
        ChannelDir::checked(fd, path.to_path_buf())
    }

    fn checked(fd: OwnedFd, path: PathBuf) -> Result<ChannelDir, OpenError> {
        check_dir(&fd, &path)?;
        Ok(ChannelDir { fd, path })
    }

    /// The directory's path (for messages: files are reached through the
    /// open directory, not this path).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a new regular file with `mode` (exactly, whatever the umask)
    /// that is not yet visible as `name`: the channel writes its header and
    /// then publishes it under `name` in one step, so a reader never finds a
    /// half-made buffer. The file is unnamed (`O_TMPFILE`) where the file
    /// system supports it, otherwise a hidden `.<name>.new-<pid>-<n>` created
    /// with `O_EXCL`.
    ///
    /// # Errors
    /// Any I/O error.
    pub fn create_unpublished(&self, name: &str, mode: u32) -> io::Result<UnpublishedFile> {
        let m = Mode::from_raw_mode(mode);
        let rw = OFlags::RDWR | OFlags::CLOEXEC;
        match rustix::fs::openat(&self.fd, ".", rw | OFlags::TMPFILE, m) {
            Ok(fd) => {
                let file = File::from(fd);
                rustix::fs::fchmod(&file, m)?;
                Ok(UnpublishedFile {
                    file,
                    name: name.to_string(),
                    temp: None,
                })
            }
            // No O_TMPFILE on this file system (or kernel): a hidden name.
            Err(
                rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL,
            ) => self.create_hidden(name, mode),
            Err(e) => Err(e.into()),
        }
    }

    /// [`create_unpublished`](Self::create_unpublished) under a hidden name.
    fn create_hidden(&self, name: &str, mode: u32) -> io::Result<UnpublishedFile> {
        let m = Mode::from_raw_mode(mode);
        let rw = OFlags::RDWR | OFlags::CLOEXEC;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        loop {
            // SYNC POINT: Relaxed: a counter for unique names, nothing else
            // is published through it.
            let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let temp = format!(".{name}{TEMP_MARK}{}-{n}", std::process::id());
            match rustix::fs::openat(
                &self.fd,
                temp.as_str(),
                rw | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
                m,
            ) {
                Ok(fd) => {
                    let file = File::from(fd);
                    rustix::fs::fchmod(&file, m)?;
                    return Ok(UnpublishedFile {
                        file,
                        name: name.to_string(),
                        temp: Some(temp),
                    });
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Makes `new` visible under its name, never replacing anything there
    /// (`EEXIST` if something is).
    pub(crate) fn publish(&self, new: &mut UnpublishedFile) -> io::Result<()> {
        let r = self.link_in(new);
        if r.is_ok() {
            new.temp = None;
        }
        r
    }

    fn link_in(&self, new: &UnpublishedFile) -> io::Result<()> {
        match &new.temp {
            None => {
                let proc = format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&new.file)
                );
                match rustix::fs::linkat(
                    CWD,
                    proc.as_str(),
                    &self.fd,
                    new.name.as_str(),
                    AtFlags::SYMLINK_FOLLOW,
                ) {
                    Ok(()) => Ok(()),
                    // No /proc: AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH).
                    Err(rustix::io::Errno::NOENT) => Ok(rustix::fs::linkat(
                        &new.file,
                        "",
                        &self.fd,
                        new.name.as_str(),
                        AtFlags::EMPTY_PATH,
                    )?),
                    Err(e) => Err(e.into()),
                }
            }
            Some(temp) => {
                match rustix::fs::renameat_with(
                    &self.fd,
                    temp.as_str(),
                    &self.fd,
                    new.name.as_str(),
                    RenameFlags::NOREPLACE,
                ) {
                    Ok(()) => Ok(()),
                    // No RENAME_NOREPLACE here: link (never replaces), then
                    // drop the temporary name.
                    Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                        rustix::fs::linkat(
                            &self.fd,
                            temp.as_str(),
                            &self.fd,
                            new.name.as_str(),
                            AtFlags::empty(),
                        )?;
                        let _ = rustix::fs::unlinkat(&self.fd, temp.as_str(), AtFlags::empty());
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Looks at entry `name` without following it.
    pub(crate) fn stat(&self, name: &str) -> io::Result<EntryStat> {
        stat_at(self.fd.as_fd(), name)
    }

    /// Opens entry `name` with `flags` (plus `O_NOFOLLOW | O_CLOEXEC`).
    pub(crate) fn open_at(&self, name: &str, flags: OFlags) -> io::Result<File> {
        Ok(File::from(rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?))
    }

    /// Creates a FIFO `name` with `mode` (less the umask).
    pub(crate) fn mkfifo(&self, name: &str, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::mkfifoat(
            &self.fd,
            name,
            Mode::from_raw_mode(mode),
        )?)
    }

    /// Removes entry `name` (not a directory).
    ///
    /// # Errors
    /// Any I/O error.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Removes entry `name` if it is still the file `ident` (not something
    /// put in its place).
    pub(crate) fn unlink_if_same(&self, name: &str, ident: Ident) -> io::Result<bool> {
        if self.stat(name)?.ident != ident {
            return Ok(false);
        }
        self.unlink(name)?;
        Ok(true)
    }

    /// The names of the directory's entries.
    pub(crate) fn names(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for ent in rustix::fs::Dir::read_from(&self.fd)? {
            let ent = ent?;
            let name = ent.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            out.push(String::from_utf8_lossy(name).into_owned());
        }
        Ok(out)
    }

    /// `path()/name`, for messages.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(OsStr::from_bytes(name.as_bytes()))
    }
}

/// Marks the hidden name of a buffer file not yet published (where the file
/// system has no `O_TMPFILE`): `.<name>.new-<pid>-<n>`.
pub(crate) const TEMP_MARK: &str = ".new-";

/// A buffer file created by [`ChannelDir::create_unpublished`]: not visible
/// under its name until the channel has written its header.
#[derive(Debug)]
pub struct UnpublishedFile {
    file: File,
    name: String,
    temp: Option<String>,
}

impl UnpublishedFile {
    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The name it will be published under.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn temp_name(&self) -> Option<&str> {
        self.temp.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn publish_twice(new: impl Fn(&ChannelDir) -> UnpublishedFile) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ChannelDir::open(tmp.path()).unwrap();
        let mut a = new(&dir);
        a.file().write_all(b"first").unwrap();
        let listing = || {
            let mut v = dir.names().unwrap();
            v.sort();
            v
        };
        assert!(!listing().contains(&"b0".to_string()), "not visible before");
        dir.publish(&mut a).unwrap();
        assert_eq!(listing(), ["b0"], "published, no hidden name left");
        assert_eq!(std::fs::read(tmp.path().join("b0")).unwrap(), b"first");
        let mut b = new(&dir);
        b.file().write_all(b"second").unwrap();
        let e = dir.publish(&mut b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(tmp.path().join("b0")).unwrap(), b"first");
    }

    #[test]
    fn publishing_never_replaces_unnamed() {
        publish_twice(|d| d.create_unpublished("b0", 0o600).unwrap());
    }

    #[test]
    fn publishing_never_replaces_hidden() {
        publish_twice(|d| {
            let f = d.create_hidden("b0", 0o600).unwrap();
            assert!(f.temp_name().is_some_and(|t| t.starts_with(".b0.new-")));
            f
        });
    }
}
