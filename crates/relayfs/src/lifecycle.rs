//! A channel's files over its life, from `relay_open` to `relay_close`:
//! the channel directory, the check of what a gone producer left, creating
//! every buffer unpublished, publishing them, removing what a failed open
//! made, and removing a buffer's names at close. The hot path (`channel`,
//! `buffer`) never comes here.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{FileType, OFlags};

use crate::buffer::Mapped;
use crate::callbacks::{BufferInfo, Callbacks, Mode};
use crate::dir::{ChannelDir, CreatedDir, EntryStat, Ident, RelayRoot, UnpublishedFile, TEMP_MARK};
use crate::error::OpenError;
use crate::layout::{BufferHeader, Geometry};
use crate::notify::Notifier;
use crate::shm::{self, ProducerMap};

/// Environment variable naming the relay directory (default
/// [`DEFAULT_RELAY_DIR`]).
pub const RELAYFS_DIR_ENV: &str = "RELAYFS_DIR";
/// Where channels live unless `RELAYFS_DIR` says otherwise.
pub const DEFAULT_RELAY_DIR: &str = "/dev/shm/relayfs";
/// The relay directory: `$RELAYFS_DIR`, or `/dev/shm/relayfs`.
pub fn relay_dir() -> PathBuf {
    std::env::var_os(RELAYFS_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RELAY_DIR))
}

/// The longest channel or base name: a buffer's FIFO name (`.<base><cpu>.wake`)
/// must stay within the file system's 255-byte limit.
pub(crate) const MAX_NAME: usize = 200;

pub(crate) fn check_name(name: &str) -> Result<(), OpenError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(OpenError::Name(name.to_string()));
    }
    if name.len() > MAX_NAME {
        return Err(OpenError::NameTooLong {
            name: name.to_string(),
            len: name.len(),
            max: MAX_NAME,
        });
    }
    Ok(())
}

/// What to do when the channel directory holds buffer files of a producer
/// that is gone (it died, or closed without removing them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stale {
    /// Remove them and create new files (readers that still have the old ones
    /// open keep reading the old data; nothing is mixed).
    #[default]
    Replace,
    /// Fail with [`OpenError::Stale`].
    Refuse,
}

/// Where a channel's files go: the arguments of `relay_open` that say so.
pub(crate) struct DirSpec<'a> {
    /// A directory given with `ChannelBuilder::dir` (the kernel's
    /// `parent`): used as it is, never made or removed.
    pub dir: Option<&'a Path>,
    /// The relay directory to make the channel directory in (default
    /// [`relay_dir()`](crate::relay_dir)).
    pub root: Option<&'a Path>,
    /// The channel's name: its directory's name under the root.
    pub name: &'a str,
    /// The buffer files' mode: who may read them may search the directory.
    pub file_mode: u32,
}

/// Opens (or makes) the directory of a channel, checked (see
/// `docs/DESIGN.md`, "Files of a channel"). Returns it, and what was made
/// if `relay_open` made it (to be removed at close if empty).
///
/// # Errors
/// A bad name, a symbolic link, a foreign or insecure directory, or a file
/// system error.
pub(crate) fn open_dir(spec: &DirSpec<'_>) -> Result<(ChannelDir, Option<CreatedDir>), OpenError> {
    if let Some(d) = spec.dir {
        return Ok((ChannelDir::open(d)?, None));
    }
    check_name(spec.name)?;
    let root = spec.root.map_or_else(relay_dir, Path::to_path_buf);
    let root = RelayRoot::open_or_create(&root)?;
    // Whoever may read the files may search the directory.
    let mut dmode = 0o700;
    if spec.file_mode & 0o040 != 0 {
        dmode |= 0o050;
    }
    if spec.file_mode & 0o004 != 0 {
        dmode |= 0o005;
    }
    root.channel(spec.name, dmode)
}

/// What the buffers of a channel are made from.
pub(crate) struct BufferSpec<'a> {
    /// Base name of the buffer files (`cpu` gives `cpu0`, `cpu1`, …).
    pub base: &'a str,
    /// The shape of every buffer.
    pub geometry: Geometry,
    /// Mode of the buffer files (the FIFOs get its read and write bits).
    pub file_mode: u32,
    /// What to do with files a gone producer left.
    pub stale: Stale,
    /// One global buffer asked for (`create_buf_file` may ask too).
    pub global: bool,
    /// The client's callbacks (`create_buf_file`, `remove_buf_file`, the
    /// mode).
    pub callbacks: &'a dyn Callbacks,
}

/// The buffers of a new channel, each whole and published.
pub(crate) struct NewBuffers {
    pub bufs: Vec<NewBuffer>,
    /// Whether the channel has one global buffer.
    pub global: bool,
    /// Possible CPUs.
    pub ncpu: usize,
}

/// One buffer [`create_buffers`] made.
pub(crate) struct NewBuffer {
    pub files: BufferFiles,
    /// The mapping, its header written and its state initialised.
    pub map: Mapped<ProducerMap>,
    pub info: BufferInfo,
    /// The producer's end of the wakeup FIFO.
    pub notifier: Notifier,
}

/// A buffer's names in the channel directory and the file behind them.
pub(crate) struct BufferFiles {
    file: UnpublishedFile,
    /// The buffer file's device and inode: its name is removed only if it
    /// still is this file.
    ident: Ident,
    name: String,
    path: PathBuf,
    fifo_name: String,
    /// The FIFO's identity, once made.
    fifo: Option<Ident>,
    published: bool,
}

/// Why making a buffer failed, which says what there is to undo.
enum MakeError {
    /// `create_buf_file` failed: nothing was made.
    Create(OpenError),
    /// The file was made but could not be set up (locked, allocated,
    /// mapped): a hidden name it got must go again.
    Setup {
        file: UnpublishedFile,
        error: OpenError,
    },
}

/// Creates every buffer of a channel unpublished, then publishes them (each
/// one's FIFO, then its file) from the highest CPU down to `cpu0`, so that a
/// reader that finds `cpu0` finds every buffer its header's buffer count
/// promises, each whole. First removes (or refuses) what a gone producer
/// left. On failure removes what it made.
///
/// # Errors
/// [`OpenError`]: a live producer on the channel, stale files with
/// [`Stale::Refuse`], a file that is not ours, no space, or a file system
/// error.
pub(crate) fn create_buffers(
    dir: &ChannelDir,
    spec: &BufferSpec<'_>,
) -> Result<NewBuffers, OpenError> {
    clear_stale(dir, spec.base, spec.stale)?;
    let ncpu = crate::cpu::possible_cpus();
    if ncpu as u64 > crate::layout::MAX_BUFFERS {
        return Err(crate::FormatError::BufferCount(ncpu as u64).into());
    }
    let facts = Facts {
        overwrite: spec.callbacks.mode() == Mode::Overwrite,
        channel_id: random_id(),
        created_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        ncpu,
    };
    let mut made: Vec<(BufferFiles, Mapped<ProducerMap>, BufferInfo)> = Vec::new();
    let mut global = spec.global;
    let mut result = Ok(());
    for cpu in 0..ncpu {
        if global && cpu == 1 {
            break;
        }
        match make_buffer(dir, spec, cpu, &facts, &mut global) {
            Ok(b) => made.push(b),
            Err(MakeError::Create(e)) => {
                result = Err(e);
                break;
            }
            Err(MakeError::Setup { file, error }) => {
                if let Some(t) = file.temp_name() {
                    let _ = dir.unlink(t);
                }
                result = Err(error);
                break;
            }
        }
    }
    let mut notifiers = Vec::new();
    if result.is_ok() {
        for (files, _, _) in made.iter_mut().rev() {
            match files.publish(dir, spec.file_mode & 0o660) {
                Ok(n) => notifiers.push(n),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    if let Err(e) = result {
        for (files, _, _) in &made {
            let _ = files.remove(dir, spec.callbacks);
        }
        return Err(e);
    }
    notifiers.reverse();
    let bufs = made
        .into_iter()
        .zip(notifiers)
        .map(|((files, map, info), notifier)| NewBuffer {
            files,
            map,
            info,
            notifier,
        })
        .collect();
    Ok(NewBuffers { bufs, global, ncpu })
}

/// What every buffer's header says besides its CPU and geometry.
struct Facts {
    overwrite: bool,
    channel_id: u64,
    created_ns: u64,
    ncpu: usize,
}

/// Creates one buffer file through `create_buf_file`, unpublished, locks
/// and allocates it and writes its header.
fn make_buffer(
    dir: &ChannelDir,
    spec: &BufferSpec<'_>,
    cpu: usize,
    facts: &Facts,
    global: &mut bool,
) -> Result<(BufferFiles, Mapped<ProducerMap>, BufferInfo), MakeError> {
    let name = format!("{}{}", spec.base, cpu);
    let mut want_global = *global;
    let file = spec
        .callbacks
        .create_buf_file(dir, &name, spec.file_mode, &mut want_global)
        .map_err(|e| {
            MakeError::Create(OpenError::Io {
                what: "create buffer file",
                path: dir.join(&name),
                source: e,
            })
        })?;
    if cpu == 0 {
        *global = want_global;
    }
    match set_up(&file, dir, &name, spec.geometry, cpu, facts, *global) {
        Ok((ident, map, info)) => Ok((
            BufferFiles {
                file,
                ident,
                fifo_name: crate::notify::fifo_name(&name),
                path: info.path.clone(),
                name,
                fifo: None,
                published: false,
            },
            map,
            info,
        )),
        Err(error) => Err(MakeError::Setup { file, error }),
    }
}

fn set_up(
    file: &UnpublishedFile,
    dir: &ChannelDir,
    name: &str,
    g: Geometry,
    cpu: usize,
    facts: &Facts,
    global: bool,
) -> Result<(Ident, Mapped<ProducerMap>, BufferInfo), OpenError> {
    let path = dir.join(name);
    let io = |what, e| OpenError::Io {
        what,
        path: path.clone(),
        source: e,
    };
    if file.name() != name {
        return Err(io(
            "create buffer file",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("create_buf_file made {:?}, not {name:?}", file.name()),
            ),
        ));
    }
    let f = file.file();
    if !shm::try_lock_byte(f, shm::PRODUCER_LOCK_BYTE).map_err(|e| io("lock", e))? {
        return Err(OpenError::Busy {
            path: dir.path().to_path_buf(),
            pid: 0,
        });
    }
    let meta = f.metadata().map_err(|e| io("stat", e))?;
    shm::allocate(f, g.file_size).map_err(|e| OpenError::NoSpace {
        path: path.clone(),
        size: g.file_size,
        source: e,
    })?;
    let header = BufferHeader {
        geometry: g,
        cpu: cpu as u64,
        producer_pid: std::process::id() as u64,
        channel_id: facts.channel_id,
        overwrite: facts.overwrite,
        global,
        n_buffers: if global { 1 } else { facts.ncpu as u64 },
        created_ns: facts.created_ns,
    };
    let map = ProducerMap::create(f, g).map_err(|e| io("mmap", e))?;
    let map = Mapped::create(map, &header);
    Ok((Ident::of(&meta), map, BufferInfo { cpu, path, global }))
}

impl BufferFiles {
    /// The buffer file (the producer's locks are on it).
    pub(crate) fn file(&self) -> &File {
        self.file.file()
    }

    /// Makes the buffer visible: its wakeup FIFO first (so that a reader
    /// that opens the file finds it), then the file, under its name in one
    /// step, never replacing anything. Returns the FIFO's producer end.
    fn publish(&mut self, dir: &ChannelDir, fifo_mode: u32) -> Result<Notifier, OpenError> {
        let (notifier, ident) =
            Notifier::create(dir, &self.fifo_name, fifo_mode).map_err(|e| OpenError::Io {
                what: "create wakeup fifo",
                path: dir.join(&self.fifo_name),
                source: e,
            })?;
        self.fifo = Some(ident);
        dir.publish(&mut self.file).map_err(|e| OpenError::Io {
            what: "publish buffer file",
            path: self.path.clone(),
            source: e,
        })?;
        self.published = true;
        Ok(notifier)
    }

    /// Removes the buffer's names: the file through `remove_buf_file` and
    /// the FIFO, each only if the name still is ours (or the hidden name of
    /// a file never published).
    pub(crate) fn remove(&self, dir: &ChannelDir, cb: &dyn Callbacks) -> std::io::Result<()> {
        let mut r = Ok(());
        if self.published {
            r = match dir.stat(&self.name) {
                Ok(st) if st.ident == self.ident => cb.remove_buf_file(dir, &self.name),
                // Its reader removed it (it was left for the reader, who
                // drained it and let go before we looked again).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Ok(_) => Err(std::io::Error::other(format!(
                    "{} is no longer this channel's buffer; left alone",
                    self.path.display()
                ))),
                Err(e) => Err(e),
            };
        } else if let Some(t) = self.file.temp_name() {
            let _ = dir.unlink_if_same(t, self.ident);
        }
        if let Some(fifo) = self.fifo {
            let _ = dir.unlink_if_same(&self.fifo_name, fifo);
        }
        r
    }
}

/// Removes (or refuses) buffer files of a dead producer; fails if a live
/// producer holds them. Only what is proven ours is removed: a buffer file
/// must be a regular file (not a symbolic link) that we own with a valid
/// buffer header, a FIFO a FIFO we own; anything else under those names is
/// [`OpenError::NotOurs`] and left in place. The hidden file of a buffer
/// never published (its producer died in `relay_open`) is removed if it is
/// ours and no producer holds it.
fn clear_stale(dir: &ChannelDir, base: &str, stale: Stale) -> Result<(), OpenError> {
    let io = |what, path: PathBuf, e| OpenError::Io {
        what,
        path,
        source: e,
    };
    let me = crate::dir::euid();
    let digits = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    let not_ours = |name: &str, reason: String| OpenError::NotOurs {
        path: dir.join(name),
        reason,
    };
    let names = dir
        .names()
        .map_err(|e| io("read directory", dir.path().to_path_buf(), e))?;
    let mut old = Vec::new();
    let mut leftovers = Vec::new();
    for name in names {
        let is_buf = name.strip_prefix(base).is_some_and(digits);
        let hidden = name.strip_prefix('.').and_then(|n| n.strip_prefix(base));
        let is_fifo = hidden
            .and_then(|n| n.strip_suffix(".wake"))
            .is_some_and(digits);
        let is_temp = hidden
            .and_then(|n| n.split_once(TEMP_MARK))
            .is_some_and(|(cpu, _)| digits(cpu));
        if !(is_buf || is_fifo || is_temp) {
            continue;
        }
        let st = match dir.stat(&name) {
            Ok(st) => st,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("stat", dir.join(&name), e)),
        };
        let foreign = |st: &EntryStat| {
            (st.uid != me).then(|| format!("it belongs to uid {}, not to uid {me}", st.uid))
        };
        if is_buf {
            if st.kind != FileType::RegularFile {
                return Err(not_ours(&name, format!("it is {}", st.kind_name())));
            }
            let f = dir
                .open_at(&name, OFlags::RDONLY | OFlags::NONBLOCK)
                .map_err(|e| io("open", dir.join(&name), e))?;
            let meta = f.metadata().map_err(|e| io("stat", dir.join(&name), e))?;
            if Ident::of(&meta) != st.ident || !meta.is_file() {
                return Err(not_ours(&name, "it changed while being looked at".into()));
            }
            let header = shm::read_header(&f, &dir.join(&name));
            if shm::byte_locked(&f, shm::PRODUCER_LOCK_BYTE).unwrap_or(false) {
                return Err(OpenError::Busy {
                    path: dir.path().to_path_buf(),
                    pid: header.map_or(0, |h| h.producer_pid),
                });
            }
            if let Some(why) = foreign(&st) {
                return Err(not_ours(&name, why));
            }
            if let Err(e) = header {
                let why = match e {
                    crate::ReadError::Format { source, .. } => source.to_string(),
                    e => e.to_string(),
                };
                return Err(not_ours(&name, format!("no valid buffer header: {why}")));
            }
            old.push((name, st.ident));
        } else if is_fifo {
            if st.kind != FileType::Fifo {
                return Err(not_ours(
                    &name,
                    format!("it is {} where a wakeup FIFO belongs", st.kind_name()),
                ));
            }
            if let Some(why) = foreign(&st) {
                return Err(not_ours(&name, why));
            }
            old.push((name, st.ident));
        } else if st.kind == FileType::RegularFile && st.uid == me {
            let held = dir
                .open_at(&name, OFlags::RDONLY | OFlags::NONBLOCK)
                .map(|f| shm::byte_locked(&f, shm::PRODUCER_LOCK_BYTE).unwrap_or(true))
                .unwrap_or(true);
            if !held {
                leftovers.push((name, st.ident));
            }
        }
    }
    for (name, ident) in leftovers {
        let _ = dir.unlink_if_same(&name, ident);
    }
    if old.is_empty() {
        return Ok(());
    }
    if stale == Stale::Refuse {
        return Err(OpenError::Stale(dir.path().to_path_buf()));
    }
    for (name, ident) in old {
        match dir.unlink_if_same(&name, ident) {
            Ok(true) => {}
            Ok(false) => {
                return Err(not_ours(
                    &name,
                    "it was replaced while being looked at".into(),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove stale buffer", dir.join(&name), e)),
        }
    }
    Ok(())
}

fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
