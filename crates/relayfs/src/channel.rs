//! The producer's side: a channel (the kernel's `struct rchan`) of one buffer
//! per possible CPU, or one global buffer, and the client API that writes
//! into it: `relay_open`, `relay_write`, `relay_reserve`, `relay_flush`,
//! `relay_reset`, `relay_subbufs_consumed`, `relay_close`.

use std::path::{Path, PathBuf};

use rustix::fs::{FileType, OFlags};
use std::sync::atomic::{AtomicBool, AtomicU64 as StdAtomicU64, Ordering as StdOrdering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::buffer::{BufferStats, Hooks, Reserved, Shared, SwitchInfo};
use crate::callbacks::{BufferInfo, Callbacks, DefaultCallbacks, Mode};
use crate::dir::{ChannelDir, CreatedDir, EntryStat, Ident, RelayRoot, UnpublishedFile, TEMP_MARK};
use crate::error::{OpenError, WriteError};
use crate::layout::{
    hdr, Geometry, FLAG_GLOBAL, FLAG_OVERWRITE, LEFT_DIR, LEFT_FOR_READER, STATE_CLOSED, STATE_OPEN,
};
use crate::notify::Notifier;
use crate::shm::{self, ProducerMap};
use crate::sync::Ordering;

/// Environment variable naming the relay directory (default
/// [`DEFAULT_RELAY_DIR`]).
pub const RELAYFS_DIR_ENV: &str = "RELAYFS_DIR";
/// Where channels live unless `RELAYFS_DIR` says otherwise.
pub const DEFAULT_RELAY_DIR: &str = "/dev/shm/relayfs";
/// Default sub-buffer size: 1 MiB.
pub const DEFAULT_SUBBUF_SIZE: u64 = 1 << 20;
/// Default number of sub-buffers: 16 (16 MiB per CPU).
pub const DEFAULT_N_SUBBUFS: u64 = 16;

/// The relay directory: `$RELAYFS_DIR`, or `/dev/shm/relayfs`.
pub fn relay_dir() -> PathBuf {
    std::env::var_os(RELAYFS_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RELAY_DIR))
}

/// Name of the wakeup FIFO beside a buffer file.
pub fn wake_fifo_path(buffer_path: &Path) -> PathBuf {
    let name = buffer_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    buffer_path.with_file_name(format!(".{name}.wake"))
}

/// The longest channel or base name: a buffer's FIFO name (`.<base><cpu>.wake`)
/// must stay within the file system's 255-byte limit.
pub(crate) const MAX_NAME: usize = 200;

fn check_name(name: &str) -> Result<(), OpenError> {
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

/// Builder for a [`Channel`] (the arguments of `relay_open`).
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// use relayfs::Channel;
/// let chan = Channel::builder("example")
///     .dir(dir.path())
///     .subbuf_size(4096)
///     .n_subbufs(4)
///     .open()?;
/// chan.write(b"hello")?;
/// chan.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ChannelBuilder {
    name: String,
    base: String,
    dir: Option<PathBuf>,
    root: Option<PathBuf>,
    subbuf_size: u64,
    n_subbufs: u64,
    hdr_reserve: u64,
    mode: u32,
    stale: Stale,
    global: bool,
    flush_interval: Option<Duration>,
    callbacks: Arc<dyn Callbacks>,
}

impl std::fmt::Debug for ChannelBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("dir", &self.dir)
            .field("subbuf_size", &self.subbuf_size)
            .field("n_subbufs", &self.n_subbufs)
            .finish_non_exhaustive()
    }
}

impl ChannelBuilder {
    /// A channel called `name`: its buffers go to `<relay dir>/<name>/cpuN`.
    pub fn new(name: &str) -> ChannelBuilder {
        ChannelBuilder {
            name: name.to_string(),
            base: "cpu".to_string(),
            dir: None,
            root: None,
            subbuf_size: DEFAULT_SUBBUF_SIZE,
            n_subbufs: DEFAULT_N_SUBBUFS,
            hdr_reserve: 0,
            mode: 0o600,
            stale: Stale::Replace,
            global: false,
            flush_interval: None,
            callbacks: Arc::new(DefaultCallbacks),
        }
    }

    /// Base name of the buffer files (`base_filename`; default `cpu`, giving
    /// `cpu0`, `cpu1`, …).
    pub fn base(mut self, base: &str) -> Self {
        self.base = base.to_string();
        self
    }

    /// The directory to put the buffer files in (the kernel's `parent`),
    /// instead of `<relay dir>/<name>`. It must exist, must not be a
    /// symbolic link, must belong to us (or root) and, if others may write
    /// to it, be sticky. It is never removed.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The relay directory to make the channel directory in, instead of
    /// [`relay_dir()`] (`$RELAYFS_DIR` or `/dev/shm/relayfs`).
    pub fn relay_dir(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Sub-buffer size in bytes: a power of two from 64 bytes to 1 GiB
    /// (default 1 MiB).
    pub fn subbuf_size(mut self, size: u64) -> Self {
        self.subbuf_size = size;
        self
    }

    /// Number of sub-buffers per buffer (default 16).
    pub fn n_subbufs(mut self, n: u64) -> Self {
        self.n_subbufs = n;
        self
    }

    /// Bytes reserved at the start of every sub-buffer for a header that
    /// [`Callbacks::subbuf_header`] fills in (`subbuf_start_reserve`).
    pub fn subbuf_start_reserve(mut self, len: u64) -> Self {
        self.hdr_reserve = len;
        self
    }

    /// The client's callbacks (default [`DefaultCallbacks`]).
    pub fn callbacks(mut self, cb: impl Callbacks) -> Self {
        self.callbacks = Arc::new(cb);
        self
    }

    /// Shorthand for the ready-made callbacks of a mode.
    pub fn mode(self, mode: Mode) -> Self {
        match mode {
            Mode::NoOverwrite => self.callbacks(DefaultCallbacks),
            Mode::Overwrite => self.callbacks(crate::OverwriteCallbacks),
        }
    }

    /// File mode of the buffer files (default 0600; 0640 lets the file's
    /// group read, and gives the channel directory 0750). World-writable and
    /// execute bits are always cleared.
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o774;
        self
    }

    /// One buffer for all CPUs (the kernel's `is_global`).
    pub fn global(mut self, global: bool) -> Self {
        self.global = global;
        self
    }

    /// What to do with files left by a producer that is gone.
    pub fn stale(mut self, stale: Stale) -> Self {
        self.stale = stale;
        self
    }

    /// Flush every buffer at this interval, so that a reader never waits
    /// longer than that for a partly filled sub-buffer (a background thread;
    /// writers are not involved).
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = Some(every);
        self
    }

    /// Creates the channel (`relay_open`).
    ///
    /// # Errors
    /// [`OpenError`]: a bad argument, a live producer on the same channel,
    /// stale files with [`Stale::Refuse`], no space, or a file system error.
    pub fn open(self) -> Result<Channel, OpenError> {
        check_name(&self.base)?;
        let g = Geometry::new(
            self.subbuf_size,
            self.n_subbufs,
            self.hdr_reserve,
            shm::page_size().max(4096),
        )?;
        let (dir, created) = match &self.dir {
            Some(d) => (ChannelDir::open(d)?, None),
            None => {
                check_name(&self.name)?;
                let root = self.root.clone().unwrap_or_else(relay_dir);
                let root = RelayRoot::open_or_create(&root)?;
                // Whoever may read the files may search the directory.
                let mut dmode = 0o700;
                if self.mode & 0o040 != 0 {
                    dmode |= 0o050;
                }
                if self.mode & 0o004 != 0 {
                    dmode |= 0o005;
                }
                root.channel(&self.name, dmode)?
            }
        };
        match self.open_in(&dir, g) {
            Ok((bufs, global, ncpu)) => {
                let inner = Arc::new(Inner {
                    bufs,
                    global,
                    ncpu,
                    max_record: g.max_record(),
                    callbacks: self.callbacks.clone(),
                    dir,
                    created,
                    base: self.base.clone(),
                    geometry: g,
                    closed: AtomicBool::new(false),
                    flush_lock: Mutex::new(()),
                });
                let flusher = self
                    .flush_interval
                    .map(|every| Flusher::start(inner.clone(), every));
                Ok(Channel { inner, flusher })
            }
            Err(e) => {
                if let Some(c) = created {
                    c.remove();
                }
                Err(e)
            }
        }
    }

    /// Creates every buffer unpublished, then publishes them (each one's
    /// FIFO, then its file) from the highest CPU down to `cpu0`, so that a
    /// reader that finds `cpu0` finds every buffer its header's buffer count
    /// promises, each whole. On failure removes what it made.
    fn open_in(
        &self,
        dir: &ChannelDir,
        g: Geometry,
    ) -> Result<(Vec<Buffer>, bool, usize), OpenError> {
        clear_stale(dir, &self.base, self.stale)?;
        let overwrite = self.callbacks.mode() == Mode::Overwrite;
        let ncpu = crate::cpu::possible_cpus();
        if ncpu as u64 > crate::layout::MAX_BUFFERS {
            return Err(crate::FormatError::BufferCount(ncpu as u64).into());
        }
        let channel_id = random_id();
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut bufs: Vec<Buffer> = Vec::new();
        let mut global = self.global;
        let mut result = Ok(());
        for cpu in 0..ncpu {
            if global && cpu == 1 {
                break;
            }
            let name = format!("{}{}", self.base, cpu);
            let facts = Facts {
                cpu,
                g,
                overwrite,
                channel_id,
                created,
                ncpu,
            };
            match Buffer::create(dir, &name, facts, self, &mut global) {
                Ok(b) => bufs.push(b),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            for b in bufs.iter_mut().rev() {
                if let Err(e) = b.publish(dir, self.mode & 0o660) {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            for b in &bufs {
                let _ = b.remove(dir, &*self.callbacks);
            }
            return Err(e);
        }
        Ok((bufs, global, ncpu))
    }
}

/// What a buffer's header says besides its geometry's own fields.
#[derive(Clone, Copy)]
struct Facts {
    cpu: usize,
    g: Geometry,
    overwrite: bool,
    channel_id: u64,
    created: u64,
    ncpu: usize,
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
            let header = crate::reader::header_of(&f, &dir.join(&name));
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

/// One buffer of a channel, producer side.
struct Buffer {
    map: ProducerMap,
    file: UnpublishedFile,
    /// The buffer file's device and inode: at close its name is removed
    /// only if it still is this file.
    ident: Ident,
    name: String,
    fifo_name: String,
    /// The FIFO's identity, once made.
    fifo: Option<Ident>,
    published: bool,
    info: BufferInfo,
    notifier: Mutex<Option<Notifier>>,
    mapped_seen: StdAtomicU64,
}

impl Buffer {
    /// Creates the buffer file, unpublished, and writes its header; a hidden
    /// name it got is removed again if that fails.
    fn create(
        dir: &ChannelDir,
        name: &str,
        facts: Facts,
        b: &ChannelBuilder,
        global: &mut bool,
    ) -> Result<Buffer, OpenError> {
        let mut want_global = *global;
        let file = b
            .callbacks
            .create_buf_file(dir, name, b.mode, &mut want_global)
            .map_err(|e| OpenError::Io {
                what: "create buffer file",
                path: dir.join(name),
                source: e,
            })?;
        if facts.cpu == 0 {
            *global = want_global;
        }
        let temp = file.temp_name().map(str::to_string);
        Self::init(file, dir, name, facts, *global).inspect_err(|_| {
            if let Some(t) = temp {
                let _ = dir.unlink(&t);
            }
        })
    }

    fn init(
        file: UnpublishedFile,
        dir: &ChannelDir,
        name: &str,
        facts: Facts,
        global: bool,
    ) -> Result<Buffer, OpenError> {
        let Facts {
            cpu,
            g,
            overwrite,
            channel_id,
            created,
            ncpu,
        } = facts;
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
        let flags =
            if overwrite { FLAG_OVERWRITE } else { 0 } | if global { FLAG_GLOBAL } else { 0 };
        let fields = [
            (hdr::VERSION, crate::layout::VERSION),
            (hdr::PAGE_SIZE, g.page_size),
            (hdr::SUBBUF_SIZE, g.subbuf_size),
            (hdr::N_SUBBUFS, g.n_subbufs),
            (hdr::HDR_RESERVE, g.hdr_reserve),
            (hdr::FLAGS, flags),
            (hdr::CPU, cpu as u64),
            (hdr::PRODUCER_PID, std::process::id() as u64),
            (hdr::CHANNEL_ID, channel_id),
            (hdr::DESC_OFFSET, g.desc_offset),
            (hdr::READER_OFFSET, g.reader_offset),
            (hdr::DATA_OFFSET, g.data_offset),
            (hdr::FILE_SIZE, g.file_size),
            (hdr::CREATED_NS, created),
            (hdr::N_BUFFERS, if global { 1 } else { ncpu as u64 }),
            (hdr::STATE, STATE_OPEN),
            (hdr::EPOCH, 0),
        ];
        let map = ProducerMap::create(f, g, flags, &fields).map_err(|e| io("mmap", e))?;
        Ok(Buffer {
            map,
            file,
            ident: Ident::of(&meta),
            name: name.to_string(),
            fifo_name: format!(".{name}.wake"),
            fifo: None,
            published: false,
            info: BufferInfo { cpu, path, global },
            notifier: Mutex::new(None),
            mapped_seen: StdAtomicU64::new(0),
        })
    }

    /// Makes the buffer visible: its wakeup FIFO first (so that a reader
    /// that opens the file finds it), then the file, under its name in one
    /// step, never replacing anything.
    fn publish(&mut self, dir: &ChannelDir, fifo_mode: u32) -> Result<(), OpenError> {
        let (notifier, ident) =
            Notifier::create(dir, &self.fifo_name, fifo_mode).map_err(|e| OpenError::Io {
                what: "create wakeup fifo",
                path: dir.join(&self.fifo_name),
                source: e,
            })?;
        self.fifo = Some(ident);
        if let Ok(mut n) = self.notifier.lock() {
            *n = Some(notifier);
        }
        dir.publish(&mut self.file).map_err(|e| OpenError::Io {
            what: "publish buffer file",
            path: self.info.path.clone(),
            source: e,
        })?;
        self.published = true;
        Ok(())
    }

    #[inline(always)]
    fn shared(&self) -> &Shared {
        &self.map.shared
    }

    /// Removes the buffer's names: the file through `remove_buf_file` and
    /// the FIFO, each only if the name still is ours (or the hidden name of
    /// a file never published).
    fn remove(&self, dir: &ChannelDir, cb: &dyn Callbacks) -> std::io::Result<()> {
        let mut r = Ok(());
        if self.published {
            r = match dir.stat(&self.name) {
                Ok(st) if st.ident == self.ident => cb.remove_buf_file(dir, &self.name),
                // Its reader removed it (it was left for the reader, who
                // drained it and let go before we looked again).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Ok(_) => Err(std::io::Error::other(format!(
                    "{} is no longer this channel's buffer; left alone",
                    self.info.path.display()
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

/// The hooks the buffer protocol calls, bound to one buffer.
struct BufHooks<'a> {
    buf: &'a Buffer,
    cb: &'a dyn Callbacks,
}

impl Hooks for BufHooks<'_> {
    fn may_open(&self, info: &SwitchInfo) -> bool {
        self.cb.subbuf_start(&self.buf.info, info)
    }

    fn write_header(&self, info: &SwitchInfo, header: &mut [u8]) {
        self.cb.subbuf_header(&self.buf.info, info, header)
    }

    fn wake_reader(&self) {
        if let Ok(n) = self.buf.notifier.lock() {
            if let Some(n) = n.as_ref() {
                n.wake();
            }
        }
    }

    fn map_changed(&self, mapped: u64) {
        let before = self.buf.mapped_seen.swap(mapped, StdOrdering::Relaxed);
        if mapped > before {
            self.cb.buf_mapped(&self.buf.info, mapped);
        } else if mapped < before {
            self.cb.buf_unmapped(&self.buf.info, mapped);
        }
    }
}

struct Inner {
    bufs: Vec<Buffer>,
    global: bool,
    ncpu: usize,
    max_record: u64,
    callbacks: Arc<dyn Callbacks>,
    dir: ChannelDir,
    /// The channel directory, if this `relay_open` made it: removed at
    /// close if it is empty then.
    created: Option<CreatedDir>,
    base: String,
    geometry: Geometry,
    closed: AtomicBool,
    flush_lock: Mutex<()>,
}

impl Inner {
    fn flush(&self) {
        let _g = self.flush_lock.lock();
        for b in &self.bufs {
            let hooks = BufHooks {
                buf: b,
                cb: &*self.callbacks,
            };
            b.shared().flush(&hooks);
        }
    }
}

/// The periodic flush thread (`flush_interval`).
struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(inner: Arc<Inner>, every: Duration) -> Flusher {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("relayfs-flush".into())
            .spawn(move || {
                let (lock, cv) = &*s2;
                let Ok(mut stopped) = lock.lock() else { return };
                while !*stopped {
                    match cv.wait_timeout(stopped, every) {
                        Ok((g, _)) => stopped = g,
                        Err(_) => return,
                    }
                    if !*stopped {
                        inner.flush();
                    }
                }
            })
            .ok();
        Flusher { stop, thread }
    }

    fn stop(&mut self) {
        if let Ok(mut s) = self.stop.0.lock() {
            *s = true;
        }
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A relay channel: one buffer per possible CPU (or one global buffer), each
/// a relay file that readers in other processes open with
/// [`RelayFile`](crate::RelayFile).
///
/// `Channel` is `Sync`: share it (`&Channel`, `Arc<Channel>`) between any
/// number of writer threads. A write goes to the buffer of the CPU the thread
/// runs on.
pub struct Channel {
    inner: Arc<Inner>,
    flusher: Option<Flusher>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("dir", &self.inner.dir.path())
            .field("base", &self.inner.base)
            .field("buffers", &self.inner.bufs.len())
            .field("geometry", &self.inner.geometry)
            .finish()
    }
}

/// A slot reserved in a buffer (`relay_reserve`): fill it in place through
/// `Deref<Target = [u8]>`, then [`commit`](Reservation::commit) it or drop it
/// (which commits too). Readers see it only once committed.
///
/// The bytes start out as whatever the buffer held before: write all of them.
pub struct Reservation<'a> {
    buf: &'a Buffer,
    cb: &'a dyn Callbacks,
    r: Reserved,
    len: usize,
}

impl std::fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("cpu", &self.buf.info.cpu)
            .field("len", &self.len)
            .finish()
    }
}

impl Reservation<'_> {
    /// Commits the record: it becomes visible to readers once its whole
    /// sub-buffer is complete.
    pub fn commit(self) {
        // Drop commits.
    }

    /// The CPU whose buffer holds the reservation.
    pub fn cpu(&self) -> usize {
        self.buf.info.cpu
    }
}

impl std::ops::Deref for Reservation<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the reservation's `len` bytes at `r.pos` lie within one
        // sub-buffer, are handed to this reservation alone by the protocol,
        // and stay mapped while the channel (borrowed by `'a`) lives.
        unsafe { std::slice::from_raw_parts(self.buf.shared().data_ptr(self.r.pos), self.len) }
    }
}

impl std::ops::DerefMut for Reservation<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.buf.shared().data_ptr(self.r.pos), self.len) }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let hooks = BufHooks {
            buf: self.buf,
            cb: self.cb,
        };
        self.buf.shared().commit(self.r, &hooks);
    }
}

impl Channel {
    /// Starts building a channel called `name`.
    pub fn builder(name: &str) -> ChannelBuilder {
        ChannelBuilder::new(name)
    }

    #[inline(always)]
    fn current(&self) -> &Buffer {
        let inner = &*self.inner;
        if inner.global {
            return &inner.bufs[0];
        }
        let cpu = crate::cpu::current_cpu();
        // A CPU beyond the possible ones can't happen; if it does, wrap.
        inner
            .bufs
            .get(cpu)
            .unwrap_or_else(|| &inner.bufs[cpu % inner.bufs.len()])
    }

    /// Writes one record into the buffer of the current CPU (`relay_write`).
    /// An empty record is a no-op.
    ///
    /// # Errors
    /// [`WriteError::Full`] (no-overwrite mode, buffer full) or
    /// [`WriteError::TooBig`]; either way the record is counted as dropped.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let chan = relayfs::Channel::builder("w").dir(dir.path()).subbuf_size(4096).n_subbufs(2).open()?;
    /// chan.write(&[1, 2, 3])?;
    /// assert_eq!(chan.write(&[0; 5000]), Err(relayfs::WriteError::TooBig(5000)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn write(&self, data: &[u8]) -> Result<(), WriteError> {
        let buf = self.current();
        self.write_to(buf, data)
    }

    /// Writes one record into the buffer of `cpu` (`__relay_write` with an
    /// explicit buffer), e.g. for a writer that pins itself.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    ///
    /// # Panics
    /// If `cpu` is not a buffer of this channel.
    pub fn write_cpu(&self, cpu: usize, data: &[u8]) -> Result<(), WriteError> {
        self.write_to(&self.inner.bufs[cpu], data)
    }

    #[inline(always)]
    fn write_to(&self, buf: &Buffer, data: &[u8]) -> Result<(), WriteError> {
        let len = data.len() as u64;
        if len == 0 {
            return Ok(());
        }
        if len > self.inner.max_record {
            return Err(buf.shared().drop_toobig(data.len()));
        }
        let hooks = BufHooks {
            buf,
            cb: &*self.inner.callbacks,
        };
        let r = buf.shared().reserve(len, &hooks)?;
        buf.shared().write_at(r.pos, data);
        buf.shared().commit(r, &hooks);
        Ok(())
    }

    /// Reserves `len` bytes for one record in the current CPU's buffer
    /// (`relay_reserve`), to be filled in place.
    ///
    /// # Errors
    /// As [`write`](Self::write); `len == 0` is refused as `TooBig(0)`
    /// without being counted.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let chan = relayfs::Channel::builder("r").dir(dir.path()).subbuf_size(4096).n_subbufs(2).open()?;
    /// let mut slot = chan.reserve(8)?;
    /// slot.copy_from_slice(&42u64.to_le_bytes());
    /// slot.commit();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn reserve(&self, len: usize) -> Result<Reservation<'_>, WriteError> {
        let buf = self.current();
        if len == 0 {
            return Err(WriteError::TooBig(0));
        }
        if len as u64 > self.inner.max_record {
            return Err(buf.shared().drop_toobig(len));
        }
        let cb = &*self.inner.callbacks;
        let r = buf.shared().reserve(len as u64, &BufHooks { buf, cb })?;
        Ok(Reservation { buf, cb, r, len })
    }

    /// Closes the current sub-buffer of every buffer so that readers can read
    /// it (`relay_flush`).
    pub fn flush(&self) {
        self.inner.flush();
    }

    /// Resets every buffer to its initial state without reallocating or
    /// unmapping (`relay_reset`). `&mut self` guarantees that no write or
    /// reservation is in progress; readers start over from the beginning.
    pub fn reset(&mut self) {
        let inner = &*self.inner;
        let _g = inner.flush_lock.lock();
        for b in &inner.bufs {
            b.shared().init_state();
            b.shared()
                .header_word(hdr::EPOCH)
                .fetch_add(1, Ordering::Release);
        }
    }

    /// Tells the channel that the reader of `cpu`'s buffer consumed `n`
    /// sub-buffers (`relay_subbufs_consumed`), for readers that read through
    /// the mapping and report back through the producer. Returns how many
    /// were complete and so consumed. It works by position, as the kernel's
    /// does, in both modes: it claims each complete sub-buffer at the
    /// reader's position and counts its records as consumed (in overwrite
    /// mode it can't know whether the reader's copy was torn: a mapping
    /// reader in the reader's process uses `Mapping::consume`); sub-buffers
    /// found overwritten are skipped and counted by their writers.
    ///
    /// # Errors
    /// [`crate::FormatError::Corrupt`] if the buffer's shared state is.
    ///
    /// # Panics
    /// If `cpu` is not a buffer of this channel.
    pub fn subbufs_consumed(&self, cpu: usize, n: u64) -> Result<u64, crate::FormatError> {
        self.inner.bufs[cpu]
            .shared()
            .subbufs_consumed(n, false, None)
    }

    /// The counters of `cpu`'s buffer.
    ///
    /// # Panics
    /// If `cpu` is not a buffer of this channel.
    pub fn stats(&self, cpu: usize) -> BufferStats {
        self.inner.bufs[cpu].shared().stats()
    }

    /// The counters of all buffers, summed.
    pub fn total_stats(&self) -> BufferStats {
        let mut t = BufferStats::default();
        for b in &self.inner.bufs {
            add_stats(&mut t, &b.shared().stats());
        }
        t
    }

    /// Number of buffers (possible CPUs, or 1 for a global buffer).
    pub fn n_buffers(&self) -> usize {
        self.inner.bufs.len()
    }

    /// Number of possible CPUs.
    pub fn n_cpus(&self) -> usize {
        self.inner.ncpu
    }

    /// Whether the channel has one global buffer.
    pub fn is_global(&self) -> bool {
        self.inner.global
    }

    /// The channel directory.
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// Path of `cpu`'s relay file.
    ///
    /// # Panics
    /// If `cpu` is not a buffer of this channel.
    pub fn buffer_path(&self, cpu: usize) -> &Path {
        &self.inner.bufs[cpu].info.path
    }

    /// The buffer geometry.
    pub fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    /// Finalizes every buffer (`relay_close`): flushes the last sub-buffers,
    /// marks the channel closed, wakes readers and removes the files through
    /// `remove_buf_file`, and the channel directory if `relay_open` made it
    /// and it is empty now (never one passed with [`ChannelBuilder::dir`]).
    /// Readers that have the files open drain what is left
    /// and then see end of data. A buffer no reader is attached to at that
    /// moment can't be read any more: the producer takes its reader lock
    /// (so none can attach) and counts what was left unread in
    /// `unread_at_close`. Dropping a `Channel` does the same.
    ///
    /// Returns the final counters of all buffers, summed: with what attached
    /// readers still drain, `records_consumed` plus `lost()` covers every
    /// record offered.
    ///
    /// # Errors
    /// The first error of `remove_buf_file`; every buffer is closed anyway.
    pub fn close(mut self) -> std::io::Result<BufferStats> {
        self.close_inner()?;
        Ok(self.total_stats())
    }

    fn close_inner(&mut self) -> std::io::Result<()> {
        if let Some(mut f) = self.flusher.take() {
            f.stop();
        }
        let inner = &*self.inner;
        if inner.closed.swap(true, StdOrdering::AcqRel) {
            return Ok(());
        }
        inner.flush();
        let mut result = Ok(());
        for b in &inner.bufs {
            // Nothing is written any more. If no reader holds the reader
            // lock, take it: then none is attached or can attach, so what is
            // unconsumed will never be read: count it, and move the reader's
            // position past it, so that a reader attaching after we let go
            // finds the buffer drained (and the end, once it is closed
            // below). The state is stored closed before the lock is let go,
            // so that a reader whose open found the lock taken sees why and
            // tries again (`RelayFile::open`).
            //
            // If a reader holds the lock, that reader drains it, and the file
            // stays until it has: the reader removes it then (the buffer
            // lives until its last user lets go). A reader that dies first
            // leaves it to a later one, which resumes where it stopped, so
            // nothing it had not read is lost uncounted.
            let lock =
                |f: &std::fs::File| shm::try_lock_byte(f, shm::READER_LOCK_BYTE).is_ok_and(|l| l);
            let mut held = lock(b.file.file());
            if !held {
                let mut left = LEFT_FOR_READER;
                if let Some(c) = &inner.created {
                    let id = c.ident();
                    b.shared()
                        .header_word(hdr::DIR_DEV)
                        .store(id.dev, Ordering::Relaxed);
                    b.shared()
                        .header_word(hdr::DIR_INO)
                        .store(id.ino, Ordering::Relaxed);
                    left |= LEFT_DIR;
                }
                // Relaxed: published by the Release store of STATE below.
                b.shared()
                    .header_word(hdr::LEFT)
                    .store(left, Ordering::Relaxed);
                // SYNC POINT: Release pairs with the reader's Acquire load of
                // STATE (in its drop and its open): a reader that sees CLOSED
                // sees every sub-buffer flushed and the LEFT word.
                b.shared()
                    .header_word(hdr::STATE)
                    .store(STATE_CLOSED, Ordering::Release);
                // The reader may have let go meanwhile, having seen the state
                // still open: then nobody else would remove the file.
                held = lock(b.file.file());
            }
            if held {
                b.shared().count_unread_at_close();
                b.shared()
                    .header_word(hdr::LEFT)
                    .store(0, Ordering::Relaxed);
                // SYNC POINT: Release, as above.
                b.shared()
                    .header_word(hdr::STATE)
                    .store(STATE_CLOSED, Ordering::Release);
                let _ = shm::unlock_byte(b.file.file(), shm::READER_LOCK_BYTE);
            }
            if let Ok(mut n) = b.notifier.lock() {
                if let Some(n) = n.take() {
                    n.wake();
                } // dropping the FIFO: readers see POLLHUP
            }
            if !held {
                continue;
            }
            if let Err(e) = b.remove(&inner.dir, &*inner.callbacks) {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        if let Some(c) = &inner.created {
            c.remove();
        }
        result
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}

pub(crate) fn add_stats(t: &mut BufferStats, s: &BufferStats) {
    t.records_written += s.records_written;
    t.bytes_written += s.bytes_written;
    t.records_pending += s.records_pending;
    t.subbufs_produced += s.subbufs_produced;
    t.subbufs_completed += s.subbufs_completed;
    t.subbufs_consumed += s.subbufs_consumed;
    t.records_consumed += s.records_consumed;
    t.bytes_consumed += s.bytes_consumed;
    t.dropped_full += s.dropped_full;
    t.dropped_toobig += s.dropped_toobig;
    t.overwritten_records += s.overwritten_records;
    t.overwritten_subbufs += s.overwritten_subbufs;
    t.discarded_records += s.discarded_records;
    t.discarded_subbufs += s.discarded_subbufs;
    t.padding_bytes += s.padding_bytes;
    t.last_toobig = t.last_toobig.max(s.last_toobig);
    t.dropped_corrupt += s.dropped_corrupt;
    t.corrupt = t.corrupt.max(s.corrupt);
    t.unread_at_close += s.unread_at_close;
}

/// Creates a channel with the kernel's argument list (`relay_open`): buffer
/// files `<parent>/<base_filename><cpu>`, or, with no `parent`,
/// `<relay dir>/<base_filename>/<base_filename><cpu>`. The client's private
/// data lives in the callbacks value.
///
/// # Errors
/// As [`ChannelBuilder::open`].
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let chan = relayfs::relay_open("cpu", Some(dir.path()), 4096, 4, relayfs::DefaultCallbacks)?;
/// assert!(dir.path().join("cpu0").exists());
/// chan.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn relay_open(
    base_filename: &str,
    parent: Option<&Path>,
    subbuf_size: u64,
    n_subbufs: u64,
    callbacks: impl Callbacks,
) -> Result<Channel, OpenError> {
    let mut b = ChannelBuilder::new(base_filename)
        .base(base_filename)
        .subbuf_size(subbuf_size)
        .n_subbufs(n_subbufs)
        .callbacks(callbacks);
    if let Some(p) = parent {
        b = b.dir(p);
    }
    b.open()
}
