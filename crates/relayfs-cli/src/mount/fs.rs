//! The filesystem: channel directories, buffer files read through the
//! library's `RelayFile`, and the control files beside them.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, PollEvents, PollFlags, PollNotifier, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyPoll, Request,
};
use relayfs::{ReadError, Ready, RelayFile};

use super::watch::Watcher;
use crate::util;

/// The control files of every channel directory, beside its buffers (whose
/// names always end in a digit, so these never collide with one).
pub const CONTROL_FILES: [&str; 4] = ["dropped", "stats", "subbuf_size", "n_subbufs"];

/// How long the kernel may keep an entry or attributes: not at all, so
/// that channels and buffers appear and go away as they do on disk.
const TTL: Duration = Duration::ZERO;

/// Largest read request the kernel is asked to send (`max_write` sets the
/// connection's `max_pages`, which bounds reads too).
pub const MAX_REQUEST: u32 = 1 << 20;

/// What an inode stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Root,
    /// A channel directory.
    Channel(String),
    /// A buffer file (`cpu0`, ...) of a channel.
    Buffer(String, String),
    /// A control file of a channel.
    Control(String, &'static str),
}

/// Inode numbers, stable for the life of the mount and never reused.
#[derive(Default)]
struct Inodes {
    by_node: HashMap<Node, u64>,
    by_ino: HashMap<u64, Node>,
}

impl Inodes {
    fn ino(&mut self, n: Node) -> u64 {
        if n == Node::Root {
            return INodeNo::ROOT.0;
        }
        if let Some(&i) = self.by_node.get(&n) {
            return i;
        }
        let i = self.by_ino.len() as u64 + 2;
        self.by_node.insert(n.clone(), i);
        self.by_ino.insert(i, n);
        i
    }

    fn node(&self, ino: u64) -> Option<Node> {
        if ino == INodeNo::ROOT.0 {
            return Some(Node::Root);
        }
        self.by_ino.get(&ino).cloned()
    }
}

/// A `read` waiting (with `--follow`) for data or the end of the channel.
pub struct PendingRead {
    pub reply: ReplyData,
    pub size: u32,
    /// The reading process, to notice it was interrupted by a signal.
    pub pid: u32,
}

/// An open buffer file: the one reader of that buffer.
pub struct Handle {
    pub state: Mutex<HandleState>,
    /// A duplicate of the reader's wakeup FIFO, for the watcher's `poll(2)`.
    pub wake: Option<OwnedFd>,
}

/// What an open buffer file holds, behind its lock.
pub struct HandleState {
    /// The reader; `None` once the file was released (dropped at once, so
    /// that the reader's lock goes with the release, whoever else still
    /// holds the handle for a moment).
    file: Option<RelayFile>,
    /// Reads waiting for data, oldest first (answered in that order).
    pub pending: VecDeque<PendingRead>,
    /// The kernel's poll handle, when a `poll` is waiting for a wakeup.
    pub poll: Option<PollNotifier>,
    /// The FIFO reported `POLLHUP` (the producer's end is gone).
    pub hup: bool,
}

impl HandleState {
    /// Whether the file was released.
    pub fn released(&self) -> bool {
        self.file.is_none()
    }

    /// The reader, or `EBADF` once released.
    pub fn file(&mut self) -> Result<&mut RelayFile, Errno> {
        self.file.as_mut().ok_or(Errno::EBADF)
    }

    /// One consuming read of up to `size` bytes (at most one sub-buffer's
    /// readable run), answered with `reply` straight from the buffer's
    /// mapping if anything was ready (`RelayFile::read_handoff_in_place`:
    /// the kernel's copy into the reader is the only one). The bytes are
    /// consumed before the reply makes them visible (replying first lets a
    /// mount killed before it consumed them hand them out again:
    /// docs/PERFORMANCE.md), and marked in flight in the buffer's reader
    /// page until the reply is written: a mount killed in between leaves
    /// the mark, and the next reader counts them lost. A sub-buffer the
    /// read finished goes back to the producer only after the reply is
    /// written (`handoff_done`), so it can't be rewritten while the kernel
    /// copies from it. A reply the kernel refused counts them lost at once.
    /// (A reader killed while this runs still gets the reply, into its
    /// dying process: that the mount cannot see.)
    pub fn answer(&mut self, size: u32, reply: ReplyData) -> Answer {
        let size = (size as usize).min(MAX_REQUEST as usize);
        let Some(file) = self.file.as_mut() else {
            return Answer::Failed(reply, Errno::EBADF);
        };
        let bytes = match file.read_handoff_in_place(size) {
            Ok((h, _)) if h.bytes == 0 => return Answer::Empty(reply),
            Ok((_, bytes)) => bytes,
            Err(e) => return Answer::Failed(reply, errno(&e)),
        };
        REPLY_FAILED.with(|f| f.set(false));
        reply.data(bytes);
        if REPLY_FAILED.with(|f| f.replace(false)) {
            if let Some(l) = file.handoff_failed() {
                util::errln!(
                    "relayfs mount: {}: the kernel refused a read's reply: {} bytes{} counted lost",
                    shown(file.path()),
                    l.bytes,
                    l.records
                        .map(|r| format!(", {r} records"))
                        .unwrap_or_default()
                );
            }
        } else {
            file.handoff_done();
        }
        Answer::Sent
    }

    /// Whether the channel ended and everything is read.
    pub fn is_eof(&mut self) -> Result<bool, Errno> {
        self.file()?.is_eof().map_err(|e| errno(&e))
    }

    /// Asks for a wakeup at the next completed sub-buffer; `true` if
    /// something is there already: anything readable while reads wait, a
    /// complete sub-buffer when only a `poll` does (what it reports).
    pub fn prepare_wait(&mut self) -> Result<bool, Errno> {
        let only = self.pending.is_empty();
        let file = self.file()?;
        file.set_complete_only(only);
        let r = file.prepare_wait().map_err(|e| errno(&e));
        file.set_complete_only(false);
        r
    }

    /// The `poll(2)` events of the buffer now, as the kernel's relay poll
    /// gives them: `POLLIN|POLLRDNORM` when a complete (or flushed)
    /// sub-buffer waits, `POLLERR|POLLHUP` once the producer closed the
    /// channel or died (with `POLLIN` too while data is left). A partly
    /// filled sub-buffer is readable but not reported, as in the kernel.
    pub fn events(&mut self) -> Result<PollEvents, Errno> {
        let file = self.file()?;
        file.set_complete_only(true);
        let r = file.poll(Some(Duration::ZERO)).map_err(|e| errno(&e));
        file.set_complete_only(false);
        let r = r?;
        let mut ev = PollEvents::empty();
        if r == Ready::Readable {
            ev |= PollEvents::POLLIN | PollEvents::POLLRDNORM;
        }
        let ended = matches!(r, Ready::Closed | Ready::ProducerGone)
            || file.is_closed()
            || !file.producer_alive();
        if ended {
            ev |= PollEvents::POLLERR | PollEvents::POLLHUP;
        }
        Ok(ev)
    }
}

/// What [`HandleState::answer`] did with a read's reply.
pub enum Answer {
    /// Data was sent.
    Sent,
    /// Nothing was ready: the reply is handed back.
    Empty(ReplyData),
    /// The read failed: the reply is handed back with the error to send.
    Failed(ReplyData, Errno),
}

thread_local! {
    /// Set when the FUSE crate failed to write a reply on this thread.
    static REPLY_FAILED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The FUSE crate logs a reply it failed to write (`Failed to send FUSE
/// reply`: the kernel refused it, the request or the connection being
/// gone) and drops the error. This logger hears it, on the thread
/// that replied, so that the bytes of that reply are counted lost rather
/// than vanish.
struct ReplyWatch;

impl log::Log for ReplyWatch {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Error && m.target().starts_with("fuser")
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata())
            && r.args()
                .to_string()
                .starts_with("Failed to send FUSE reply")
        {
            REPLY_FAILED.with(|f| f.set(true));
        }
    }

    fn flush(&self) {}
}

/// Installs [`ReplyWatch`] as the process's logger.
pub fn watch_replies() {
    static WATCH: ReplyWatch = ReplyWatch;
    if log::set_logger(&WATCH).is_ok() {
        log::set_max_level(log::LevelFilter::Error);
    }
}

/// An open control file: its text, made at open.
struct Control {
    text: Vec<u8>,
}

enum Open {
    Buffer(Arc<Handle>),
    Control(Control),
}

/// The mounted relay directory.
pub struct RelayFs {
    root: PathBuf,
    follow: bool,
    inodes: Mutex<Inodes>,
    open: Mutex<HashMap<u64, Open>>,
    next_fh: AtomicU64,
    watcher: Watcher,
    /// Who mounted: the owner shown for the root when the relay directory
    /// does not exist yet.
    uid: u32,
    gid: u32,
}

/// A lock, whatever a panicking holder left.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The errno for a library error: `EBUSY` for a second reader, `EACCES`
/// and the like as the file gave them, `EIO` for a corrupt buffer.
pub fn errno(e: &ReadError) -> Errno {
    match e {
        ReadError::Busy(_) => Errno::EBUSY,
        ReadError::NotRegular { .. } => Errno::ENOENT,
        ReadError::Io { source, .. } => source
            .raw_os_error()
            .map(Errno::from_i32)
            .unwrap_or(Errno::EIO),
        _ => Errno::EIO,
    }
}

/// Whether `name` can be a file name under the relay directory (no
/// separator, not `.` or `..`).
fn plain(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

impl RelayFs {
    /// A filesystem over the relay directory `root`.
    pub fn new(root: PathBuf, follow: bool, watcher: Watcher) -> RelayFs {
        RelayFs {
            root,
            follow,
            inodes: Mutex::new(Inodes::default()),
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            watcher,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    fn node(&self, ino: INodeNo) -> Option<Node> {
        lock(&self.inodes).node(ino.0)
    }

    fn ino(&self, n: Node) -> u64 {
        lock(&self.inodes).ino(n)
    }

    fn chan_dir(&self, chan: &str) -> PathBuf {
        self.root.join(chan)
    }

    /// The valid buffer files of a channel directory, in CPU order (the
    /// files `relayfs record` would read; a stray file is not one).
    fn buffers(&self, chan: &str) -> Vec<util::BufferFile> {
        if self.chan_meta(chan).is_none() {
            return Vec::new();
        }
        util::scan_channel(&self.chan_dir(chan), None)
            .map(|s| s.bufs)
            .unwrap_or_default()
    }

    /// Whether `m` is a channel directory the mount shows, by the rule the
    /// library's readers follow (`ChannelDir`): a directory, not a symbolic
    /// link, owned by the mounting user or root, and not writable by group
    /// or others unless sticky. So another user can neither plant a
    /// channel in a mount run by root nor swap a shown one for a link to
    /// another channel between a check and an open.
    fn trusted_dir(&self, m: &std::fs::Metadata) -> bool {
        m.file_type().is_dir()
            && (m.uid() == 0 || m.uid() == self.uid)
            && (m.mode() & 0o022 == 0 || m.mode() & 0o1000 != 0)
    }

    /// The metadata of channel directory `chan`, if it is one the mount
    /// shows.
    fn chan_meta(&self, chan: &str) -> Option<std::fs::Metadata> {
        if !plain(chan) || chan.starts_with('.') {
            return None;
        }
        let m = std::fs::symlink_metadata(self.chan_dir(chan)).ok()?;
        self.trusted_dir(&m).then_some(m)
    }

    /// The channel directories under the relay directory: see
    /// [`trusted_dir`](Self::trusted_dir); hidden ones are not shown.
    fn channels(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| self.chan_meta(n).is_some())
            .collect();
        v.sort();
        v
    }

    fn attr(&self, ino: u64, m: &std::fs::Metadata, kind: FileType, perm: u32) -> FileAttr {
        let t = |s: i64, ns: i64| {
            if s >= 0 {
                SystemTime::UNIX_EPOCH + Duration::new(s as u64, ns.clamp(0, 999_999_999) as u32)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        FileAttr {
            ino: INodeNo(ino),
            // Relay files have no size: reads say how much there is.
            size: 0,
            blocks: 0,
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm: (perm & 0o7777) as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The attributes of a node, mirroring the file or directory it shows:
    /// owner, group and mode (a control file: the channel directory's read
    /// bits). `None` if it is not there (any more).
    fn getattr_node(&self, n: &Node) -> Option<FileAttr> {
        let ino = self.ino(n.clone());
        match n {
            Node::Root => match std::fs::symlink_metadata(&self.root) {
                Ok(m) if m.is_dir() => {
                    Some(self.attr(ino, &m, FileType::Directory, m.mode() & 0o555))
                }
                _ => {
                    let now = SystemTime::now();
                    Some(FileAttr {
                        ino: INodeNo(ino),
                        size: 0,
                        blocks: 0,
                        atime: now,
                        mtime: now,
                        ctime: now,
                        crtime: now,
                        kind: FileType::Directory,
                        perm: 0o555,
                        nlink: 2,
                        uid: self.uid,
                        gid: self.gid,
                        rdev: 0,
                        blksize: 4096,
                        flags: 0,
                    })
                }
            },
            Node::Channel(c) => {
                let m = self.chan_meta(c)?;
                Some(self.attr(ino, &m, FileType::Directory, m.mode() & 0o555))
            }
            Node::Buffer(c, b) => {
                self.chan_meta(c)?;
                let m = std::fs::symlink_metadata(self.chan_dir(c).join(b)).ok()?;
                m.is_file()
                    .then(|| self.attr(ino, &m, FileType::RegularFile, m.mode() & 0o444))
            }
            Node::Control(c, _) => {
                let m = self.chan_meta(c)?;
                Some(self.attr(ino, &m, FileType::RegularFile, m.mode() & 0o444))
            }
        }
    }

    /// The node `name` in directory `parent`, if it is there now.
    fn child(&self, parent: &Node, name: &str) -> Option<Node> {
        if !plain(name) {
            return None;
        }
        match parent {
            Node::Root => self
                .chan_meta(name)
                .map(|_| Node::Channel(name.to_string())),
            Node::Channel(c) => {
                if let Some(k) = CONTROL_FILES.iter().find(|k| **k == name) {
                    return Some(Node::Control(c.clone(), k));
                }
                self.buffers(c)
                    .iter()
                    .any(|b| b.name == name)
                    .then(|| Node::Buffer(c.clone(), name.to_string()))
            }
            _ => None,
        }
    }

    /// The text of a control file of channel `chan`.
    fn control_text(&self, chan: &str, which: &str) -> Result<Vec<u8>, Errno> {
        let mut stats = Vec::new();
        for b in self.buffers(chan) {
            match RelayFile::inspect(&b.path) {
                Ok(st) => stats.push((b.name, st)),
                Err(e) => return Err(errno(&e)),
            }
        }
        let Some((_, first)) = stats.first() else {
            return Err(Errno::ENOENT);
        };
        let g = first.header.geometry;
        let text = match which {
            "subbuf_size" => format!("{}\n", g.subbuf_size),
            "n_subbufs" => format!("{}\n", g.n_subbufs),
            "dropped" => {
                let n: u64 = stats.iter().map(|(_, s)| s.stats.lost()).sum();
                format!("{n}\n")
            }
            _ => {
                let bufs: Vec<serde_json::Value> = stats
                    .iter()
                    .map(|(name, st)| {
                        let s = &st.stats;
                        serde_json::json!({
                            "buffer": name,
                            "producer_alive": st.producer_alive,
                            "closed": st.closed,
                            "reader_attached": st.reader_attached,
                            "subbufs_produced": s.subbufs_produced,
                            "subbufs_consumed": s.subbufs_consumed,
                            "records_written": s.records_written(),
                            "bytes_written": s.bytes_written,
                            "records_consumed": s.records_consumed,
                            "bytes_consumed": s.bytes_consumed,
                            "dropped_full": s.dropped_full,
                            "dropped_toobig": s.dropped_toobig,
                            "dropped_corrupt": s.dropped_corrupt,
                            "overwritten_records": s.overwritten_records,
                            "overwritten_subbufs": s.overwritten_subbufs,
                            "discarded_records": s.discarded_records,
                            "padding_bytes": s.padding_bytes,
                            "unread_at_close": s.unread_at_close,
                            "lost": s.lost(),
                        })
                    })
                    .collect();
                let v = serde_json::json!({
                    "channel": chan,
                    "subbuf_size": g.subbuf_size,
                    "n_subbufs": g.n_subbufs,
                    "overwrite": first.header.overwrite,
                    "buffers": bufs,
                });
                format!("{v}\n")
            }
        };
        Ok(text.into_bytes())
    }

    /// Whether the process `req` came from may read and write the buffer
    /// file `m` as its own user (a reader needs both: it consumes): the
    /// mount reads on its behalf, so it must not let anyone consume a
    /// buffer they could not consume directly. (The kernel has checked
    /// read permission on the mirrored mode already.)
    fn may_consume(req: &Request, m: &std::fs::Metadata) -> bool {
        let uid = req.uid();
        if uid == 0 {
            return true;
        }
        let mode = m.mode();
        let bits = if uid == m.uid() {
            (mode >> 6) & 7
        } else if req.gid() == m.gid() || in_groups(req.pid(), m.gid()) {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        bits & 6 == 6
    }

    fn open_buffer(&self, req: &Request, chan: &str, name: &str) -> Result<Arc<Handle>, Errno> {
        if self.chan_meta(chan).is_none() {
            return Err(Errno::ENOENT);
        }
        let path = self.chan_dir(chan).join(name);
        let m = std::fs::symlink_metadata(&path).map_err(Errno::from)?;
        if !m.is_file() {
            return Err(Errno::ENOENT);
        }
        if !Self::may_consume(req, &m) {
            return Err(Errno::EACCES);
        }
        let file = RelayFile::open(&path).map_err(|e| errno(&e))?;
        if let Some(l) = file.lost_handoff() {
            util::errln!(
                "relayfs mount: {}: the last reader died handing on a read: {} bytes{} counted lost",
                shown(&path),
                l.bytes,
                l.records.map(|r| format!(", {r} records")).unwrap_or_default()
            );
        }
        let wake = file.wake_fd().and_then(|fd| fd.try_clone_to_owned().ok());
        Ok(Arc::new(Handle {
            state: Mutex::new(HandleState {
                file: Some(file),
                pending: VecDeque::new(),
                poll: None,
                hup: false,
            }),
            wake,
        }))
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        match lock(&self.open).get(&fh.0) {
            Some(Open::Buffer(h)) => Some(h.clone()),
            _ => None,
        }
    }
}

/// Whether the process `pid` has group `gid` among its supplementary groups
/// (from `/proc/<pid>/status`).
fn in_groups(pid: u32, gid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

/// Whether the process `pid` has a signal waiting that it doesn't block
/// (then a read waiting for it must give up with `EINTR`, as the kernel
/// would have it: FUSE forwards the interrupt, which this answers).
pub fn signal_pending(pid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true; // gone
    };
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let blocked = field("SigBlk:");
    (field("SigPnd:") | field("ShdPnd:")) & !blocked != 0
}

impl fuser::Filesystem for RelayFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large reads: max_write also sets max_pages, which bounds a read
        // request; a kernel that offers less keeps its own limit.
        let _ = config.set_max_write(MAX_REQUEST);
        let _ = config.set_max_readahead(MAX_REQUEST);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (Some(p), Some(name)) = (self.node(parent), name.to_str()) else {
            return reply.error(Errno::ENOENT);
        };
        match self.child(&p, name).and_then(|n| self.getattr_node(&n)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino).and_then(|n| self.getattr_node(&n)) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (INodeNo::ROOT.0, FileType::Directory, "..".into()),
        ];
        match &n {
            Node::Root => {
                for c in self.channels() {
                    let i = self.ino(Node::Channel(c.clone()));
                    entries.push((i, FileType::Directory, c));
                }
            }
            Node::Channel(c) => {
                for b in self.buffers(c) {
                    let i = self.ino(Node::Buffer(c.clone(), b.name.clone()));
                    entries.push((i, FileType::RegularFile, b.name));
                }
                for k in CONTROL_FILES {
                    let i = self.ino(Node::Control(c.clone(), k));
                    entries.push((i, FileType::RegularFile, k.to_string()));
                }
            }
            _ => return reply.error(Errno::ENOTDIR),
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EACCES);
        }
        let open = match self.node(ino) {
            Some(Node::Buffer(c, b)) => match self.open_buffer(req, &c, &b) {
                Ok(h) => Open::Buffer(h),
                Err(e) => return reply.error(e),
            },
            Some(Node::Control(c, k)) => match self.control_text(&c, k) {
                Ok(text) => Open::Control(Control { text }),
                Err(e) => return reply.error(e),
            },
            Some(_) => return reply.error(Errno::EISDIR),
            None => return reply.error(Errno::ENOENT),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.open).insert(fh, open);
        // Direct I/O: no page cache, no trust in a size; every read comes
        // here and reads the stream whatever offset it names, as the
        // kernel's relay read does. splice(2) and sendfile(2) go through
        // the page cache (which, the size being 0, gives nothing) unless
        // the file was opened O_DIRECT: then they come here as reads too.
        // So an O_DIRECT open is seekable (sendfile needs that), and any
        // other is not, which makes sendfile refuse it with EINVAL (callers
        // fall back to read + write) rather than return a false end of
        // file (docs/DESIGN.md, "The mount").
        let mut fopen = FopenFlags::FOPEN_DIRECT_IO;
        if flags.0 & libc::O_DIRECT == 0 {
            fopen |= FopenFlags::FOPEN_NONSEEKABLE;
        }
        reply.opened(FileHandle(fh), fopen);
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let h = {
            let open = lock(&self.open);
            match open.get(&fh.0) {
                Some(Open::Control(c)) => {
                    let start = (offset as usize).min(c.text.len());
                    let end = (start + size as usize).min(c.text.len());
                    return reply.data(&c.text[start..end]);
                }
                Some(Open::Buffer(h)) => h.clone(),
                None => return reply.error(Errno::EBADF),
            }
        };
        let mut st = lock(&h.state);
        if !st.pending.is_empty() {
            // Reads are answered in the order they came.
            st.pending.push_back(PendingRead {
                reply,
                size,
                pid: req.pid(),
            });
            drop(st);
            self.watcher.watch(fh.0, &h);
            return;
        }
        match st.answer(size, reply) {
            Answer::Sent => {}
            Answer::Failed(reply, e) => reply.error(e),
            Answer::Empty(reply) => {
                if !self.follow {
                    return reply.data(&[]);
                }
                match st.is_eof() {
                    Ok(true) => reply.data(&[]),
                    Ok(false) => {
                        st.pending.push_back(PendingRead {
                            reply,
                            size,
                            pid: req.pid(),
                        });
                        drop(st);
                        self.watcher.watch(fh.0, &h);
                    }
                    Err(e) => reply.error(e),
                }
            }
        }
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        ph: PollNotifier,
        _events: PollEvents,
        flags: PollFlags,
        reply: ReplyPoll,
    ) {
        let Some(h) = self.handle(fh) else {
            // A control file: always readable.
            return reply.poll(PollEvents::POLLIN | PollEvents::POLLRDNORM);
        };
        let mut st = lock(&h.state);
        match st.events() {
            Ok(ev) => {
                let schedule =
                    ev.is_empty() && flags.contains(PollFlags::FUSE_POLL_SCHEDULE_NOTIFY);
                if schedule {
                    st.poll = Some(ph);
                }
                // The look above disarmed the wakeup: the watcher arms it
                // again for what still waits.
                if schedule || !st.pending.is_empty() {
                    drop(st);
                    self.watcher.watch(fh.0, &h);
                }
                reply.poll(ev);
            }
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let gone = lock(&self.open).remove(&fh.0);
        if let Some(Open::Buffer(h)) = gone {
            let mut st = lock(&h.state);
            // The reader goes now, and its lock with it.
            st.file = None;
            for p in st.pending.drain(..) {
                p.reply.error(Errno::EBADF);
            }
            st.poll = None;
            drop(st);
            self.watcher.unwatch(fh.0);
            // The RelayFile (and with it the reader's lock) goes when the
            // last reference does: the watcher lets go of its own at once.
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Some(Node::Root | Node::Channel(_)) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
}

/// The relay directory a path names, for messages.
pub fn shown(p: &Path) -> String {
    util::escape_name(&p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_looked_up() {
        for bad in ["", ".", "..", "a/b", "/"] {
            assert!(!plain(bad), "{bad:?}");
        }
        assert!(plain("cpu0") && plain(".hidden") && plain("demo-12"));
    }

    #[test]
    fn no_signal_waiting_is_not_pending_and_a_gone_process_is() {
        // This process: no signal waiting.
        assert!(!signal_pending(std::process::id()));
        // A pid that cannot exist (above pid_max's limit).
        assert!(signal_pending(u32::MAX));
    }

    #[test]
    fn a_reply_the_fuse_crate_failed_to_send_is_heard_on_its_thread_only() {
        watch_replies();
        REPLY_FAILED.with(|f| f.set(false));
        // What fuser 0.18 logs (reply.rs, `send_ll_mut`) when the kernel
        // refuses a reply.
        log::error!(target: "fuser::reply", "Failed to send FUSE reply: No such file or directory (os error 2)");
        assert!(REPLY_FAILED.with(|f| f.replace(false)));
        std::thread::spawn(|| {
            log::error!(target: "fuser::reply", "Failed to send FUSE reply: x");
        })
        .join()
        .unwrap();
        assert!(!REPLY_FAILED.with(|f| f.get()), "another thread's reply");
        log::error!(target: "elsewhere", "Failed to send FUSE reply: x");
        log::warn!(target: "fuser::reply", "Reply not sent for operation 1");
        assert!(!REPLY_FAILED.with(|f| f.get()), "not fuser's failed send");
    }

    #[test]
    fn library_errors_map_to_errnos() {
        let p = PathBuf::from("/x");
        assert_eq!(errno(&ReadError::Busy(p.clone())), Errno::EBUSY);
        let e = ReadError::Io {
            what: "open",
            path: p,
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(errno(&e), Errno::EACCES);
    }
}
