//! # librelayfs: relayfs for C and C++
//!
//! The kernel's relay client API (`relay_open`, `relay_write`,
//! `relay_reserve`, `relay_flush`, `relay_reset`, `relay_subbufs_consumed`,
//! `relay_buf_full`, `relay_close`, `struct rchan_callbacks`) and the reader's
//! side (`relay_file_open`, `relay_file_read`, `relay_file_sendfile`,
//! `relay_file_poll`, `relay_file_close`) as C functions over the `relayfs`
//! crate. The header is `include/relayfs.h`; every function's contract and
//! errors are documented there.
//!
//! At the boundary:
//!
//! * no panic crosses it: every function runs under `catch_unwind`, and a
//!   panic becomes `-EIO` (or `NULL` with `errno` `EIO`);
//! * errors are negative `errno` values, or `NULL` with `errno` set; the
//!   last error's message (in this thread) is `relay_last_error()`;
//! * handles are opaque pointers carrying a magic word, checked before use:
//!   `NULL` or a pointer to something else gets `-EINVAL`, and so does a
//!   closed handle (closing keeps the handle's small shell allocated, so it
//!   never points into freed memory). A pointer to unreadable memory can't
//!   be checked.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![allow(non_camel_case_types)]

use std::cell::{RefCell, UnsafeCell};
use std::ffi::{c_char, c_int, c_long, c_uint, c_void, CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use relayfs::{
    BufferInfo, BufferStats, Callbacks, Channel, ChannelBuilder, ChannelDir, Mode, OpenError,
    ReadError, Ready, RelayFile, Reservation, SwitchInfo, UnpublishedFile, WriteError,
};

/// Magic word of a live channel handle ("RCHAN" + ABI 0).
const CHAN_MAGIC: u64 = u64::from_le_bytes(*b"RCHAN\0\0\x00");
/// Magic word of a live reader handle.
const FILE_MAGIC: u64 = u64::from_le_bytes(*b"RFILE\0\0\x00");
/// Magic word of a buffer description handed to a callback.
const BUF_MAGIC: u64 = u64::from_le_bytes(*b"RCBUF\0\0\x00");
/// What a handle's magic becomes when it is closed.
const DEAD_MAGIC: u64 = u64::from_le_bytes(*b"DEADBEEF");

/// `relay_file_poll` results.
pub const RELAY_POLL_TIMEOUT: c_int = 0;
/// Data can be read.
pub const RELAY_POLL_READABLE: c_int = 1;
/// The channel was closed and everything is read.
pub const RELAY_POLL_CLOSED: c_int = 2;
/// The producer died without closing the channel; everything complete is read.
pub const RELAY_POLL_PRODUCER_GONE: c_int = 3;

// ---------------------------------------------------------------------------
// Errors

thread_local! {
    /// The message of the last error in this thread (`relay_last_error`).
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(msg: impl std::fmt::Display) {
    let text = msg.to_string().replace('\0', " ");
    let c = CString::new(text).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            *e = Some(c);
        }
    });
}

/// Records `msg` as the last error and returns `-errno`.
fn fail(errno: c_int, msg: impl std::fmt::Display) -> c_int {
    set_last_error(msg);
    -errno
}

fn set_errno(errno: c_int) {
    // SAFETY: `__errno_location` returns this thread's `errno`, always valid.
    unsafe { *libc::__errno_location() = errno };
}

/// Records the error and sets `errno` for a function that returns `NULL`.
fn fail_null<T>(errno: c_int, msg: impl std::fmt::Display) -> *mut T {
    set_last_error(msg);
    set_errno(errno);
    std::ptr::null_mut()
}

fn io_errno(e: &io::Error) -> c_int {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn open_errno(e: &OpenError) -> c_int {
    match e {
        OpenError::Format(_) | OpenError::Name(_) => libc::EINVAL,
        OpenError::NameTooLong { .. } => libc::ENAMETOOLONG,
        OpenError::Busy { .. } => libc::EBUSY,
        OpenError::Stale(_) => libc::EEXIST,
        OpenError::Symlink(_) => libc::ELOOP,
        OpenError::ForeignOwner { .. } | OpenError::Insecure { .. } => libc::EPERM,
        OpenError::NotOurs { .. } => libc::EEXIST,
        OpenError::NoSpace { .. } => libc::ENOSPC,
        OpenError::Io { source, .. } => io_errno(source),
    }
}

fn write_errno(e: WriteError) -> c_int {
    match e {
        WriteError::Full => -libc::ENOBUFS,
        WriteError::TooBig(_) => -libc::EMSGSIZE,
        WriteError::Corrupt => -libc::EIO,
        WriteError::Closed => -libc::EPIPE,
    }
}

fn read_errno(e: &ReadError) -> c_int {
    match e {
        ReadError::Format { .. } => libc::EBADMSG,
        ReadError::NotRegular { kind, .. } if *kind == "a symbolic link" => libc::ELOOP,
        ReadError::NotRegular { .. } => libc::EINVAL,
        ReadError::Busy(_) => libc::EBUSY,
        ReadError::Io { source, .. } => io_errno(source),
        ReadError::NotReady { .. } | ReadError::Overwrite(_) | ReadError::Viewed { .. } => {
            libc::EINVAL
        }
        ReadError::Lockdown { .. } => libc::EPERM,
    }
}

/// The message of an error with its causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Runs `f`, turning a panic into `on_panic`.
#[inline(always)]
fn guard<T>(on_panic: impl FnOnce() -> T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => on_panic(),
    }
}

fn panicked() -> c_int {
    fail(libc::EIO, "internal error in librelayfs (a panic, caught)")
}

fn panicked_null<T>() -> *mut T {
    fail_null(libc::EIO, "internal error in librelayfs (a panic, caught)")
}

/// A C string argument, or `None` for `NULL`.
///
/// # Safety
/// `p` is `NULL` or a NUL-terminated string.
unsafe fn c_str<'a>(p: *const c_char) -> Option<&'a CStr> {
    if p.is_null() {
        None
    } else {
        // SAFETY: the caller passes a NUL-terminated string.
        Some(unsafe { CStr::from_ptr(p) })
    }
}

fn path_cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Callbacks

/// A buffer as a callback sees it (`struct rchan_buf`).
#[repr(C)]
#[derive(Debug)]
pub struct rchan_buf {
    /// Private: identifies a buffer description (`relay_buf_full` checks it).
    pub magic: u64,
    /// `relay_open`'s `private_data`.
    pub private_data: *mut c_void,
    /// Path of the buffer's relay file.
    pub filename: *const c_char,
    /// CPU of the buffer (0 for a global buffer).
    pub cpu: usize,
    /// Whether it is the channel's one global buffer.
    pub is_global: c_int,
    /// Whether the buffer is full (what `relay_buf_full` returns): the
    /// sub-buffer to open holds data the reader has not consumed. Only set
    /// in `subbuf_start` and `subbuf_header`; 0 elsewhere.
    pub full: c_int,
}

/// The sub-buffer switch `subbuf_start` and `subbuf_header` are about.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct relay_switch_info {
    /// Ordinal of the sub-buffer to open (how many were opened before it).
    pub ordinal: u64,
    /// Its index in the buffer.
    pub slot: u64,
    /// Sub-buffers consumed by the reader so far.
    pub consumed: u64,
    /// Sub-buffers in the buffer.
    pub n_subbufs: u64,
    /// Padding at the end of the sub-buffer closed before this one.
    pub prev_padding: u64,
    /// Opening it overwrites data no reader consumed (`relay_buf_full`).
    pub full: c_int,
    /// The channel is in overwrite mode.
    pub overwrite: c_int,
}

impl From<&SwitchInfo> for relay_switch_info {
    fn from(i: &SwitchInfo) -> Self {
        relay_switch_info {
            ordinal: i.ordinal,
            slot: i.slot,
            consumed: i.consumed,
            n_subbufs: i.n_subbufs,
            prev_padding: i.prev_padding,
            full: i.full as c_int,
            overwrite: i.overwrite as c_int,
        }
    }
}

/// `subbuf_start`: may the sub-buffer be opened? (non-zero: yes)
pub type subbuf_start_fn =
    unsafe extern "C" fn(buf: *mut rchan_buf, info: *const relay_switch_info) -> c_int;
/// `subbuf_header`: fill in the header reserve of a sub-buffer just opened.
pub type subbuf_header_fn = unsafe extern "C" fn(
    buf: *mut rchan_buf,
    info: *const relay_switch_info,
    header: *mut c_void,
    len: usize,
);
/// `buf_mapped` / `buf_unmapped`.
pub type buf_mapped_fn = unsafe extern "C" fn(buf: *mut rchan_buf, mapped: u64);
/// `create_buf_file`.
pub type create_buf_file_fn = unsafe extern "C" fn(
    filename: *const c_char,
    parent: *const c_char,
    mode: *mut c_uint,
    is_global: *mut c_int,
    private_data: *mut c_void,
) -> c_int;
/// `remove_buf_file`.
pub type remove_buf_file_fn = unsafe extern "C" fn(
    filename: *const c_char,
    parent: *const c_char,
    private_data: *mut c_void,
) -> c_int;

/// The client's callbacks and channel options (`struct rchan_callbacks`).
/// Every member may be `NULL`/0 for the default.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct rchan_callbacks {
    /// May a new sub-buffer be opened?
    pub subbuf_start: Option<subbuf_start_fn>,
    /// Fill in a new sub-buffer's header.
    pub subbuf_header: Option<subbuf_header_fn>,
    /// A reader mapped the buffer.
    pub buf_mapped: Option<buf_mapped_fn>,
    /// A reader unmapped the buffer.
    pub buf_unmapped: Option<buf_mapped_fn>,
    /// A buffer file is about to be created.
    pub create_buf_file: Option<create_buf_file_fn>,
    /// A buffer file is about to be removed.
    pub remove_buf_file: Option<remove_buf_file_fn>,
    /// Bytes reserved at the start of every sub-buffer for `subbuf_header`.
    pub subbuf_start_reserve: usize,
    /// Non-zero: overwrite ("flight recorder") mode.
    pub overwrite: c_int,
}

/// `relay_open`'s `private_data`, handed back to the callbacks only.
#[derive(Debug, Clone, Copy)]
struct Private(*mut c_void);

// SAFETY: the pointer is never dereferenced here, only passed back to the
// client's callbacks, which the header says may run on any thread.
unsafe impl Send for Private {}
// SAFETY: as for `Send`.
unsafe impl Sync for Private {}

/// The C callbacks behind the `Callbacks` trait.
#[derive(Debug)]
struct CCallbacks {
    cb: rchan_callbacks,
    private: Private,
}

impl CCallbacks {
    fn with_buf<R>(
        &self,
        buf: &BufferInfo,
        info: Option<&SwitchInfo>,
        f: impl FnOnce(*mut rchan_buf) -> R,
    ) -> R {
        let path = path_cstring(&buf.path);
        let mut b = rchan_buf {
            magic: BUF_MAGIC,
            private_data: self.private.0,
            filename: path.as_ptr(),
            cpu: buf.cpu,
            is_global: buf.global as c_int,
            full: info.is_some_and(|i| i.full) as c_int,
        };
        f(&mut b)
    }
}

impl Callbacks for CCallbacks {
    fn mode(&self) -> Mode {
        if self.cb.overwrite != 0 {
            Mode::Overwrite
        } else {
            Mode::NoOverwrite
        }
    }

    fn subbuf_start(&self, buf: &BufferInfo, info: &SwitchInfo) -> bool {
        let Some(f) = self.cb.subbuf_start else {
            return info.overwrite || !info.full;
        };
        let ci = relay_switch_info::from(info);
        self.with_buf(buf, Some(info), |b| {
            // SAFETY: a client callback, given pointers valid for the call.
            unsafe { f(b, &ci) != 0 }
        })
    }

    fn subbuf_header(&self, buf: &BufferInfo, info: &SwitchInfo, header: &mut [u8]) {
        let Some(f) = self.cb.subbuf_header else {
            return;
        };
        let ci = relay_switch_info::from(info);
        self.with_buf(buf, Some(info), |b| {
            // SAFETY: a client callback; `header` is valid for `len` bytes
            // during the call.
            unsafe { f(b, &ci, header.as_mut_ptr().cast(), header.len()) }
        })
    }

    fn buf_mapped(&self, buf: &BufferInfo, mapped: u64) {
        if let Some(f) = self.cb.buf_mapped {
            // SAFETY: a client callback, given a pointer valid for the call.
            self.with_buf(buf, None, |b| unsafe { f(b, mapped) })
        }
    }

    fn buf_unmapped(&self, buf: &BufferInfo, mapped: u64) {
        if let Some(f) = self.cb.buf_unmapped {
            // SAFETY: a client callback, given a pointer valid for the call.
            self.with_buf(buf, None, |b| unsafe { f(b, mapped) })
        }
    }

    fn create_buf_file(
        &self,
        dir: &ChannelDir,
        filename: &str,
        mode: u32,
        is_global: &mut bool,
    ) -> io::Result<UnpublishedFile> {
        let mut mode = mode;
        if let Some(f) = self.cb.create_buf_file {
            let name = CString::new(filename)?;
            let parent = path_cstring(dir.path());
            let mut m: c_uint = mode;
            let mut g: c_int = *is_global as c_int;
            // SAFETY: a client callback, given pointers valid for the call.
            let r = unsafe {
                f(
                    name.as_ptr(),
                    parent.as_ptr(),
                    &mut m,
                    &mut g,
                    self.private.0,
                )
            };
            if r < 0 {
                return Err(io::Error::from_raw_os_error(-r));
            }
            *is_global = g != 0;
            // As `ChannelBuilder::file_mode`: never world-writable or
            // executable.
            mode = m & 0o664;
        }
        dir.create_unpublished(filename, mode)
    }

    fn remove_buf_file(&self, dir: &ChannelDir, filename: &str) -> io::Result<()> {
        if let Some(f) = self.cb.remove_buf_file {
            let name = CString::new(filename)?;
            let parent = path_cstring(dir.path());
            // SAFETY: a client callback, given pointers valid for the call.
            let r = unsafe { f(name.as_ptr(), parent.as_ptr(), self.private.0) };
            if r < 0 {
                return Err(io::Error::from_raw_os_error(-r));
            }
            if r > 0 {
                return Ok(()); // the client keeps the file
            }
        }
        dir.unlink(filename)
    }
}

// ---------------------------------------------------------------------------
// The channel handle

/// A channel handle (`struct rchan`), opaque to C: a magic word and the
/// open channel. `relay_close` drops the channel and leaves this shell (two
/// words) allocated for good, so that a closed handle keeps being refused
/// with `-EINVAL` instead of pointing at freed memory.
pub struct rchan {
    magic: AtomicU64,
    open: AtomicPtr<OpenChannel>,
}

impl std::fmt::Debug for rchan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("rchan").finish_non_exhaustive()
    }
}

/// What a channel handle holds while it is open.
struct OpenChannel {
    chan: Channel,
    /// The buffer paths, for `relay_buffer_path`.
    paths: Vec<CString>,
}

/// The shell behind a handle, if `p` points to a live (not closed) one.
///
/// # Safety
/// `p` is `NULL`, a handle from `relay_open` (closed or not: shells are
/// never freed), or a pointer to at least 16 readable, 8-aligned bytes
/// (refused unless the first 8 hold the magic word).
#[inline(always)]
unsafe fn chan_shell<'a>(p: *const rchan) -> Option<&'a rchan> {
    if p.is_null() || (p as usize) % std::mem::align_of::<rchan>() != 0 {
        return None;
    }
    // SAFETY: per the contract, `p` points to readable memory that holds an
    // `rchan` if its magic matches; `magic` is the first field read.
    let c = unsafe { &*p };
    // SYNC POINT: Acquire pairs with the Release store of the magic in
    // `relay_open` (the handle is whole) and with the AcqRel swap in
    // `relay_close` (a closed handle is refused).
    (c.magic.load(Ordering::Acquire) == CHAN_MAGIC).then_some(c)
}

/// The open channel behind a handle, as a raw pointer.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[inline(always)]
unsafe fn chan_ptr(p: *const rchan) -> Option<*mut OpenChannel> {
    // SAFETY: per the contract.
    let c = unsafe { chan_shell(p) }?;
    // SYNC POINT: Relaxed: the pointer was stored before the magic's
    // Release store in `relay_open`, which `chan_shell` acquired.
    let o = c.open.load(Ordering::Relaxed);
    (!o.is_null()).then_some(o)
}

/// The open channel behind a handle, if `p` is a live one.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes; and the channel is not closed while the reference is
/// used (the header forbids `relay_close` racing other calls).
#[inline(always)]
unsafe fn chan_ref<'a>(p: *const rchan) -> Option<&'a OpenChannel> {
    // SAFETY: per the contract; `relay_reset`'s contract excludes the only
    // `&mut`.
    unsafe { chan_ptr(p).map(|o| &*o) }
}

/// Opens a channel. See `relay_open` in `relayfs.h`.
///
/// # Safety
/// String arguments are `NULL` or NUL-terminated; `cb` is `NULL` or points
/// to a `struct rchan_callbacks`.
#[no_mangle]
pub unsafe extern "C" fn relay_open(
    base_filename: *const c_char,
    parent: *const c_char,
    subbuf_size: usize,
    n_subbufs: usize,
    cb: *const rchan_callbacks,
    private_data: *mut c_void,
) -> *mut rchan {
    guard(panicked_null, || {
        // SAFETY: per the contract.
        let Some(base) = (unsafe { c_str(base_filename) }) else {
            return fail_null(libc::EINVAL, "relay_open: base_filename is NULL");
        };
        let Ok(base) = base.to_str() else {
            return fail_null(libc::EINVAL, "relay_open: base_filename is not UTF-8");
        };
        // SAFETY: per the contract.
        let parent =
            unsafe { c_str(parent) }.map(|p| Path::new(std::ffi::OsStr::from_bytes(p.to_bytes())));
        let callbacks = if cb.is_null() {
            rchan_callbacks::default()
        } else {
            // SAFETY: per the contract, `cb` points to the struct; copied.
            unsafe { *cb }
        };
        let mut b = ChannelBuilder::new(base)
            .base(base)
            .subbuf_size(subbuf_size as u64)
            .n_subbufs(n_subbufs as u64)
            .subbuf_start_reserve(callbacks.subbuf_start_reserve as u64)
            .callbacks(CCallbacks {
                cb: callbacks,
                private: Private(private_data),
            });
        if let Some(p) = parent {
            b = b.dir(p);
        }
        match b.open() {
            Ok(chan) => {
                let paths = (0..chan.n_buffers())
                    .map(|i| path_cstring(chan.buffer_path(i)))
                    .collect();
                let open = Box::into_raw(Box::new(OpenChannel { chan, paths }));
                let h = Box::new(rchan {
                    magic: AtomicU64::new(0),
                    open: AtomicPtr::new(open),
                });
                // SYNC POINT: Release pairs with the Acquire load in
                // `chan_ref`: a thread that sees the magic sees the handle.
                h.magic.store(CHAN_MAGIC, Ordering::Release);
                Box::into_raw(h)
            }
            Err(e) => fail_null(open_errno(&e), format!("relay_open: {}", chain(&e))),
        }
    })
}

/// Writes one record. See `relay_write` in `relayfs.h`.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or closed), or a
/// pointer to at least 16 readable bytes; `data` is valid for `length` bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_write(
    chan: *mut rchan,
    data: *const c_void,
    length: usize,
) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        let Some(c) = (unsafe { chan_ref(chan) }) else {
            return -libc::EINVAL;
        };
        if length == 0 {
            return 0;
        }
        if data.is_null() || length > isize::MAX as usize {
            return -libc::EINVAL;
        }
        // SAFETY: the caller passes `length` readable bytes at `data` (no
        // object is larger than `isize::MAX`).
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), length) };
        match c.chan.write(bytes) {
            Ok(()) => 0,
            Err(e) => write_errno(e),
        }
    })
}

/// The same as [`relay_write`] (the kernel's variant that leaves interrupts
/// alone has no user-space counterpart).
///
/// # Safety
/// As [`relay_write`].
#[no_mangle]
pub unsafe extern "C" fn __relay_write(
    chan: *mut rchan,
    data: *const c_void,
    length: usize,
) -> c_int {
    // SAFETY: same contract.
    unsafe { relay_write(chan, data, length) }
}

/// Writes one record into `cpu`'s buffer. See `relay_write_cpu`.
///
/// # Safety
/// As [`relay_write`].
#[no_mangle]
pub unsafe extern "C" fn relay_write_cpu(
    chan: *mut rchan,
    cpu: usize,
    data: *const c_void,
    length: usize,
) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        let Some(c) = (unsafe { chan_ref(chan) }) else {
            return -libc::EINVAL;
        };
        if cpu >= c.chan.n_buffers() {
            return fail(libc::EINVAL, format!("relay_write_cpu: no buffer {cpu}"));
        }
        if length == 0 {
            return 0;
        }
        if data.is_null() || length > isize::MAX as usize {
            return -libc::EINVAL;
        }
        // SAFETY: the caller passes `length` readable bytes at `data` (no
        // object is larger than `isize::MAX`).
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), length) };
        match c.chan.write_cpu(cpu, bytes) {
            Ok(()) => 0,
            Err(e) => write_errno(e),
        }
    })
}

/// A reservation waiting for `relay_commit` in this thread.
struct Pending {
    chan: *const rchan,
    data: *mut u8,
    /// Borrows the channel; the header requires every reservation to be
    /// committed before `relay_close`. Never dropped (so not committed) if
    /// the thread exits first: the channel may be gone by then.
    res: Reservation<'static>,
}

/// How many reservations a thread may hold at once.
pub const RELAY_MAX_PENDING: usize = 8;

/// This thread's reservations not yet committed: the first `n` slots.
/// Without a destructor, so that the thread-local costs one access and no
/// registration (an entry left at thread exit is never committed).
struct PendingTable {
    n: std::cell::Cell<usize>,
    /// Set while an entry is being committed: a call that comes back into
    /// the table meanwhile (from a signal handler, or a callback) is
    /// refused instead of touching the slot being dropped.
    busy: std::cell::Cell<bool>,
    slots: [UnsafeCell<MaybeUninit<Pending>>; RELAY_MAX_PENDING],
}

impl PendingTable {
    /// Keeps `p`; gives it back if the table is full or busy.
    #[inline(always)]
    fn push(&self, p: Pending) -> Result<(), Pending> {
        let n = self.n.get();
        if n == RELAY_MAX_PENDING || self.busy.get() {
            return Err(p);
        }
        // SAFETY: the table belongs to this thread; no reference into it
        // outlives a call of `push`, `commit` or `holds`, and the one place
        // where client code could run meanwhile (the drop in `commit`) is
        // fenced off by `busy`; slot `n` is free.
        unsafe { (*self.slots[n].get()).write(p) };
        self.n.set(n + 1);
        Ok(())
    }

    /// Commits the entry of `chan` at `data` in place and forgets it:
    /// 0, `-EINVAL` if there is none, `-EBUSY` if called from within a
    /// commit.
    #[inline(always)]
    fn commit(&self, chan: *const rchan, data: *mut u8) -> c_int {
        if self.busy.get() {
            return -libc::EBUSY;
        }
        let n = self.n.get();
        let Some(found) = (0..n).rev().find(|&i| {
            // SAFETY: slots below `n` are initialised; see `push`.
            let e = unsafe { (*self.slots[i].get()).assume_init_ref() };
            e.data == data && e.chan == chan
        }) else {
            return -libc::EINVAL;
        };
        let last = n - 1;
        if found != last {
            // SAFETY: both slots are initialised and distinct: swapping
            // keeps the first `n` initialised.
            unsafe { std::ptr::swap(self.slots[found].get(), self.slots[last].get()) };
        }
        self.n.set(last);
        self.busy.set(true);
        // SAFETY: slot `last` holds the entry, now outside the first
        // `n - 1`: dropped (which commits it) once, here. While it is,
        // `busy` keeps `push` and `commit` away from the table.
        unsafe { (*self.slots[last].get()).assume_init_drop() };
        self.busy.set(false);
        0
    }

    /// Whether an entry of `chan` is pending.
    fn holds(&self, chan: *const rchan) -> bool {
        (0..self.n.get()).any(|i| {
            // SAFETY: slots below `n` are initialised; see `push`.
            unsafe { (*self.slots[i].get()).assume_init_ref() }.chan == chan
        })
    }
}

thread_local! {
    static PENDING: PendingTable = const {
        PendingTable {
            n: std::cell::Cell::new(0),
            busy: std::cell::Cell::new(false),
            slots: [const { UnsafeCell::new(MaybeUninit::uninit()) }; RELAY_MAX_PENDING],
        }
    };
}

/// Reserves a record. See `relay_reserve` in `relayfs.h`.
///
/// # Safety
/// As [`relay_write`].
#[no_mangle]
pub unsafe extern "C" fn relay_reserve(chan: *mut rchan, length: usize) -> *mut c_void {
    guard(panicked_null, || {
        // SAFETY: per the contract.
        let Some(c) = (unsafe { chan_ref(chan) }) else {
            return fail_null(libc::EINVAL, "relay_reserve: not a channel");
        };
        if length == 0 {
            return fail_null(libc::EINVAL, "relay_reserve: zero length");
        }
        PENDING.with(|t| {
            if t.busy.get() {
                return fail_null(libc::EBUSY, "relay_reserve: called within a commit");
            }
            if t.n.get() == RELAY_MAX_PENDING {
                return fail_null(
                    libc::EBUSY,
                    "relay_reserve: this thread holds RELAY_MAX_PENDING reservations",
                );
            }
            let mut r = match c.chan.reserve(length) {
                Ok(r) => r,
                Err(e) => {
                    set_errno(-write_errno(e));
                    return std::ptr::null_mut();
                }
            };
            let data = r.as_mut_ptr();
            // SAFETY: the reservation borrows the channel, which lives until
            // `relay_close`; the header requires the reservation to be
            // committed before then, and `relay_commit` drops it.
            let res: Reservation<'static> = unsafe { std::mem::transmute(r) };
            match t.push(Pending { chan, data, res }) {
                Ok(()) => data.cast(),
                // Can't happen (checked above, one thread): commit the record
                // rather than lose it uncounted.
                Err(p) => {
                    p.res.commit();
                    fail_null(libc::EBUSY, "relay_reserve: too many reservations")
                }
            }
        })
    })
}

/// Commits a reservation. See `relay_commit` in `relayfs.h`.
///
/// # Safety
/// As [`relay_write`]; `reserved` is any pointer (it is looked up, never
/// dereferenced unless it is a pending reservation of this thread).
#[no_mangle]
pub unsafe extern "C" fn relay_commit(chan: *mut rchan, reserved: *mut c_void) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        if unsafe { chan_ref(chan) }.is_none() {
            return -libc::EINVAL;
        }
        match PENDING.with(|t| t.commit(chan, reserved.cast())) {
            0 => 0,
            e if e == -libc::EBUSY => fail(libc::EBUSY, "relay_commit: called within a commit"),
            _ => fail(
                libc::EINVAL,
                "relay_commit: not a pending reservation of this channel in this thread",
            ),
        }
    })
}

/// Flushes every buffer. See `relay_flush`.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_flush(chan: *mut rchan) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        let Some(c) = (unsafe { chan_ref(chan) }) else {
            return -libc::EINVAL;
        };
        c.chan.flush();
        0
    })
}

/// Resets every buffer. See `relay_reset`: nothing else may use the channel
/// meanwhile.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes; no other call on `chan` runs meanwhile and no
/// reservation is pending.
#[no_mangle]
pub unsafe extern "C" fn relay_reset(chan: *mut rchan) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        let Some(c) = (unsafe { chan_ptr(chan) }) else {
            return -libc::EINVAL;
        };
        if PENDING.with(|t| t.holds(chan)) {
            return fail(libc::EBUSY, "relay_reset: a reservation is not committed");
        }
        // SAFETY: the contract excludes any other use of the channel during
        // the call, so this is the only reference.
        unsafe { &mut (*c).chan }.reset();
        0
    })
}

/// Marks sub-buffers consumed. See `relay_subbufs_consumed`.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_subbufs_consumed(
    chan: *mut rchan,
    cpu: c_uint,
    subbufs_consumed: usize,
) -> c_long {
    guard(
        || panicked() as c_long,
        || {
            // SAFETY: per the contract.
            let Some(c) = (unsafe { chan_ref(chan) }) else {
                return -libc::EINVAL as c_long;
            };
            let cpu = cpu as usize;
            if cpu >= c.chan.n_buffers() {
                return fail(
                    libc::EINVAL,
                    format!("relay_subbufs_consumed: no buffer {cpu}"),
                ) as c_long;
            }
            match c.chan.subbufs_consumed(cpu, subbufs_consumed as u64) {
                Ok(n) => n as c_long,
                Err(e) => fail(libc::EBADMSG, format!("relay_subbufs_consumed: {e}")) as c_long,
            }
        },
    )
}

/// Whether the buffer is full. See `relay_buf_full`.
///
/// # Safety
/// `buf` is `NULL` or the pointer a callback was given, during the callback.
#[no_mangle]
pub unsafe extern "C" fn relay_buf_full(buf: *const rchan_buf) -> c_int {
    guard(panicked, || {
        if buf.is_null() || (buf as usize) % std::mem::align_of::<rchan_buf>() != 0 {
            return -libc::EINVAL;
        }
        // SAFETY: per the contract, a callback's buffer description.
        let b = unsafe { &*buf };
        if b.magic != BUF_MAGIC {
            return -libc::EINVAL;
        }
        (b.full != 0) as c_int
    })
}

/// The counters of a buffer, or of all (`struct relay_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct relay_stats {
    /// Records accepted (`records_completed + records_pending`).
    pub records_written: u64,
    /// Records in completed sub-buffers.
    pub records_completed: u64,
    /// Records committed to sub-buffers not yet complete.
    pub records_pending: u64,
    /// Record bytes in completed sub-buffers.
    pub bytes_written: u64,
    /// Sub-buffers closed.
    pub subbufs_produced: u64,
    /// Sub-buffers complete.
    pub subbufs_completed: u64,
    /// Sub-buffers consumed by the reader.
    pub subbufs_consumed: u64,
    /// Records the reader consumed.
    pub records_consumed: u64,
    /// Bytes the reader consumed.
    pub bytes_consumed: u64,
    /// Dropped: buffer full or `subbuf_start` refused.
    pub dropped_full: u64,
    /// Dropped: larger than a sub-buffer.
    pub dropped_toobig: u64,
    /// Dropped: buffer state corrupt.
    pub dropped_corrupt: u64,
    /// Dropped: the channel was closed.
    pub dropped_closed: u64,
    /// Overwritten before a reader saw them (overwrite mode).
    pub overwritten_records: u64,
    /// Sub-buffers overwritten so.
    pub overwritten_subbufs: u64,
    /// Copied by the reader but found overwritten, and discarded.
    pub discarded_records: u64,
    /// Sub-buffers discarded so.
    pub discarded_subbufs: u64,
    /// Padding bytes at the ends of closed sub-buffers.
    pub padding_bytes: u64,
    /// Records no reader can read any more, counted at close.
    pub unread_at_close: u64,
    /// Every record lost in any of the ways above.
    pub lost: u64,
    /// Non-zero if a buffer was found corrupt.
    pub corrupt: u64,
}

impl From<BufferStats> for relay_stats {
    fn from(s: BufferStats) -> Self {
        relay_stats {
            records_written: s.records_written(),
            records_completed: s.records_completed,
            records_pending: s.records_pending,
            bytes_written: s.bytes_written,
            subbufs_produced: s.subbufs_produced,
            subbufs_completed: s.subbufs_completed,
            subbufs_consumed: s.subbufs_consumed,
            records_consumed: s.records_consumed,
            bytes_consumed: s.bytes_consumed,
            dropped_full: s.dropped_full,
            dropped_toobig: s.dropped_toobig,
            dropped_corrupt: s.dropped_corrupt,
            dropped_closed: s.dropped_closed,
            overwritten_records: s.overwritten_records,
            overwritten_subbufs: s.overwritten_subbufs,
            discarded_records: s.discarded_records,
            discarded_subbufs: s.discarded_subbufs,
            padding_bytes: s.padding_bytes,
            unread_at_close: s.unread_at_close,
            lost: s.lost(),
            corrupt: s.corrupt,
        }
    }
}

/// Writes `s` to `out` if it is not `NULL`.
///
/// # Safety
/// `out` is `NULL` or points to a writable `struct relay_stats`.
unsafe fn put_stats(out: *mut relay_stats, s: BufferStats) {
    if !out.is_null() {
        // SAFETY: per the contract.
        unsafe { out.write(s.into()) };
    }
}

/// The counters of `cpu`'s buffer, or of all with `cpu` -1. See
/// `relay_stats`.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes; `out` points to a writable `struct relay_stats`.
#[no_mangle]
pub unsafe extern "C" fn relay_stats(
    chan: *mut rchan,
    cpu: c_long,
    out: *mut relay_stats,
) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        let Some(c) = (unsafe { chan_ref(chan) }) else {
            return -libc::EINVAL;
        };
        if out.is_null() {
            return -libc::EINVAL;
        }
        let ch = &c.chan;
        let s = match cpu {
            -1 => ch.total_stats(),
            n if n >= 0 && (n as usize) < ch.n_buffers() => ch.stats(n as usize),
            _ => return fail(libc::EINVAL, format!("relay_stats: no buffer {cpu}")),
        };
        // SAFETY: checked non-NULL; writable per the contract.
        unsafe { put_stats(out, s) };
        0
    })
}

/// Number of buffers. See `relay_n_buffers`.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_n_buffers(chan: *mut rchan) -> c_long {
    guard(
        || panicked() as c_long,
        || {
            // SAFETY: per the contract.
            match unsafe { chan_ref(chan) } {
                Some(c) => c.chan.n_buffers() as c_long,
                None => -libc::EINVAL as c_long,
            }
        },
    )
}

/// Path of `cpu`'s relay file. See `relay_buffer_path`.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_buffer_path(chan: *mut rchan, cpu: usize) -> *const c_char {
    guard(
        || panicked_null::<c_char>().cast_const(),
        || {
            // SAFETY: per the contract.
            let Some(c) = (unsafe { chan_ref(chan) }) else {
                return fail_null::<c_char>(libc::EINVAL, "relay_buffer_path: not a channel")
                    .cast_const();
            };
            match c.paths.get(cpu) {
                Some(p) => p.as_ptr(),
                None => {
                    fail_null::<c_char>(libc::EINVAL, format!("relay_buffer_path: no buffer {cpu}"))
                        .cast_const()
                }
            }
        },
    )
}

/// Waits for a reader on every buffer. See `relay_wait_for_readers`.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_wait_for_readers(chan: *mut rchan, timeout_ms: c_long) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        let Some(c) = (unsafe { chan_ref(chan) }) else {
            return -libc::EINVAL;
        };
        let t = Duration::from_millis(timeout_ms.max(0) as u64);
        c.chan.wait_for_readers(t) as c_int
    })
}

/// Closes the channel and frees the handle. See `relay_close`.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes; no other call on `chan` is in progress (a closed
/// handle is refused).
#[no_mangle]
pub unsafe extern "C" fn relay_close(chan: *mut rchan) -> c_int {
    // SAFETY: per the contract.
    unsafe { relay_close_stats(chan, std::ptr::null_mut()) }
}

/// Closes the channel, frees the handle and gives the final counters. See
/// `relay_close_stats`.
///
/// # Safety
/// As [`relay_close`]; `out` is `NULL` or points to a writable
/// `struct relay_stats`.
#[no_mangle]
pub unsafe extern "C" fn relay_close_stats(chan: *mut rchan, out: *mut relay_stats) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        let Some(shell) = (unsafe { chan_shell(chan) }) else {
            return -libc::EINVAL;
        };
        // SYNC POINT: AcqRel: of two racing closes only one sees the magic
        // and goes on; later `chan_shell`s (Acquire) see the handle dead.
        if shell.magic.swap(DEAD_MAGIC, Ordering::AcqRel) != CHAN_MAGIC {
            return -libc::EINVAL;
        }
        // SYNC POINT: AcqRel, as the magic's swap: the one closer takes it.
        let o = shell.open.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if o.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: `o` came from `Box::into_raw` in `relay_open`, and the
        // swaps above make this the one call that takes it back. The shell
        // stays allocated (see `rchan`).
        let c = unsafe { Box::from_raw(o) };
        let r = c.chan.close();
        let rc = match &r {
            Ok(s) => {
                // SAFETY: per the contract.
                unsafe { put_stats(out, *s) };
                0
            }
            Err(e) => {
                // SAFETY: per the contract.
                unsafe { put_stats(out, c.chan.total_stats()) };
                fail(io_errno(e), format!("relay_close: {e}"))
            }
        };
        drop(c);
        rc
    })
}

// ---------------------------------------------------------------------------
// Readers

/// A reader handle (`struct relay_file`), opaque to C: a magic word and
/// the open relay file. `relay_file_close` drops the file and leaves this
/// shell allocated for good, so that a closed handle keeps being refused
/// with `-EINVAL`; a call racing the close finds the file gone.
pub struct relay_file {
    magic: AtomicU64,
    file: Mutex<Option<Box<RelayFile>>>,
}

impl std::fmt::Debug for relay_file {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("relay_file").finish_non_exhaustive()
    }
}

/// The reader behind a handle, if `p` is a live one.
///
/// # Safety
/// `chan` is NULL, a handle from `relay_open` (open or
/// closed), or a pointer to at least 16 readable bytes, for `relay_file_open`'s handles (closed or not:
/// shells are never freed).
unsafe fn file_ref<'a>(p: *const relay_file) -> Option<&'a relay_file> {
    if p.is_null() || (p as usize) % std::mem::align_of::<relay_file>() != 0 {
        return None;
    }
    // SAFETY: per the contract.
    let f = unsafe { &*p };
    // SYNC POINT: Acquire, as in `chan_shell`, with `relay_file_open`'s
    // Release store and `relay_file_close`'s swap.
    (f.magic.load(Ordering::Acquire) == FILE_MAGIC).then_some(f)
}

/// Runs `f` on the reader behind `p`.
///
/// # Safety
/// `f` is NULL, a handle from `relay_file_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
unsafe fn with_file<T>(
    p: *mut relay_file,
    on_err: impl Fn(c_int) -> T,
    f: impl FnOnce(&mut RelayFile) -> T,
) -> T {
    // SAFETY: per the contract.
    let Some(h) = (unsafe { file_ref(p) }) else {
        return on_err(-libc::EINVAL);
    };
    let mut g = h
        .file
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match g.as_deref_mut() {
        Some(file) => f(file),
        None => on_err(-libc::EINVAL),
    }
}

/// Opens a relay file. See `relay_file_open`.
///
/// # Safety
/// `path` is `NULL` or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn relay_file_open(path: *const c_char) -> *mut relay_file {
    guard(panicked_null, || {
        // SAFETY: per the contract.
        let Some(p) = (unsafe { c_str(path) }) else {
            return fail_null(libc::EINVAL, "relay_file_open: path is NULL");
        };
        let p = Path::new(std::ffi::OsStr::from_bytes(p.to_bytes()));
        match RelayFile::open(p) {
            Ok(f) => {
                let h = Box::new(relay_file {
                    magic: AtomicU64::new(0),
                    file: Mutex::new(Some(Box::new(f))),
                });
                // SYNC POINT: Release pairs with the Acquire in `file_ref`.
                h.magic.store(FILE_MAGIC, Ordering::Release);
                Box::into_raw(h)
            }
            Err(e) => fail_null(read_errno(&e), format!("relay_file_open: {}", chain(&e))),
        }
    })
}

fn read_fail(e: &ReadError) -> isize {
    fail(read_errno(e), chain(e)) as isize
}

/// Reads what is readable. See `relay_file_read`.
///
/// # Safety
/// `f` is NULL, a handle from `relay_file_open` (open or
/// closed), or a pointer to at least 16 readable bytes; `buf` is writable for `count` bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_file_read(
    f: *mut relay_file,
    buf: *mut c_void,
    count: usize,
) -> isize {
    guard(
        || panicked() as isize,
        || {
            if buf.is_null() && count > 0 {
                return -libc::EINVAL as isize;
            }
            // SAFETY: per the contract.
            unsafe {
                with_file(
                    f,
                    |e| e as isize,
                    |r| {
                        if count == 0 {
                            return 0;
                        }
                        // SAFETY: the caller passes `count` writable bytes
                        // (no object is larger than `isize::MAX`).
                        let len = count.min(isize::MAX as usize);
                        let out = std::slice::from_raw_parts_mut(buf.cast::<u8>(), len);
                        match r.read(out) {
                            Ok(n) => n as isize,
                            Err(e) => read_fail(&e),
                        }
                    },
                )
            }
        },
    )
}

/// Sends what is readable to a file descriptor. See `relay_file_sendfile`.
///
/// # Safety
/// `f` is NULL, a handle from `relay_file_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_file_sendfile(
    f: *mut relay_file,
    out_fd: c_int,
    count: usize,
) -> isize {
    guard(
        || panicked() as isize,
        || {
            if out_fd < 0 {
                return -libc::EBADF as isize;
            }
            // SAFETY: per the contract.
            unsafe {
                with_file(
                    f,
                    |e| e as isize,
                    |r| {
                        // SAFETY: the caller's descriptor, only written to during
                        // the call; a closed one gives EBADF.
                        let fd = BorrowedFd::borrow_raw(out_fd);
                        match r.sendfile(fd, count as u64) {
                            Ok(n) => n as isize,
                            Err(e) => read_fail(&e),
                        }
                    },
                )
            }
        },
    )
}

/// Waits for data. See `relay_file_poll`.
///
/// # Safety
/// `f` is NULL, a handle from `relay_file_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_file_poll(f: *mut relay_file, timeout_ms: c_int) -> c_int {
    guard(panicked, || {
        let t = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        // SAFETY: per the contract.
        unsafe {
            with_file(
                f,
                |e| e,
                |r| match r.poll(t) {
                    Ok(Ready::Readable) => RELAY_POLL_READABLE,
                    Ok(Ready::Timeout) => RELAY_POLL_TIMEOUT,
                    Ok(Ready::Closed) => RELAY_POLL_CLOSED,
                    Ok(Ready::ProducerGone) => RELAY_POLL_PRODUCER_GONE,
                    Err(e) => read_fail(&e) as c_int,
                },
            )
        }
    })
}

/// The wakeup descriptor. See `relay_file_poll_fd`.
///
/// # Safety
/// `f` is NULL, a handle from `relay_file_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_file_poll_fd(f: *mut relay_file) -> c_int {
    use std::os::fd::AsRawFd;
    guard(panicked, || {
        // SAFETY: per the contract.
        unsafe {
            with_file(
                f,
                |e| e,
                |r| match r.wake_fd() {
                    Some(fd) => fd.as_raw_fd(),
                    None => fail(libc::ENOENT, "relay_file_poll_fd: the producer is gone"),
                },
            )
        }
    })
}

/// Arms the wakeup descriptor. See `relay_file_prepare_wait`.
///
/// # Safety
/// `f` is NULL, a handle from `relay_file_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_file_prepare_wait(f: *mut relay_file) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        unsafe {
            with_file(
                f,
                |e| e,
                |r| match r.prepare_wait() {
                    Ok(ready) => ready as c_int,
                    Err(e) => read_fail(&e) as c_int,
                },
            )
        }
    })
}

/// Whether everything is read and no more will come. See `relay_file_eof`.
///
/// # Safety
/// `f` is NULL, a handle from `relay_file_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_file_eof(f: *mut relay_file) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        unsafe {
            with_file(
                f,
                |e| e,
                |r| match r.is_eof() {
                    Ok(eof) => eof as c_int,
                    Err(e) => read_fail(&e) as c_int,
                },
            )
        }
    })
}

/// Buffers in the file's channel. See `relay_file_n_buffers`.
///
/// # Safety
/// `f` is NULL, a handle from `relay_file_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_file_n_buffers(f: *mut relay_file) -> c_long {
    guard(
        || panicked() as c_long,
        || {
            // SAFETY: per the contract.
            unsafe { with_file(f, |e| e as c_long, |r| r.header().n_buffers as c_long) }
        },
    )
}

/// The buffer's counters as the reader sees them. See `relay_file_stats`.
///
/// # Safety
/// `f` is NULL, a handle from `relay_file_open` (open or
/// closed), or a pointer to at least 16 readable bytes; `out` points to a writable `struct relay_stats`.
#[no_mangle]
pub unsafe extern "C" fn relay_file_stats(f: *mut relay_file, out: *mut relay_stats) -> c_int {
    guard(panicked, || {
        if out.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: per the contract.
        unsafe {
            with_file(
                f,
                |e| e,
                |r| {
                    // SAFETY: checked non-NULL; writable per the contract.
                    put_stats(out, r.stats());
                    0
                },
            )
        }
    })
}

/// Closes a relay file and frees the handle. See `relay_file_close`.
///
/// # Safety
/// `f` is NULL, a handle from `relay_file_open` (open or
/// closed), or a pointer to at least 16 readable bytes.
#[no_mangle]
pub unsafe extern "C" fn relay_file_close(f: *mut relay_file) -> c_int {
    guard(panicked, || {
        // SAFETY: per the contract.
        let Some(h) = (unsafe { file_ref(f) }) else {
            return -libc::EINVAL;
        };
        // SYNC POINT: AcqRel, as in `relay_close_stats`.
        if h.magic.swap(DEAD_MAGIC, Ordering::AcqRel) != FILE_MAGIC {
            return -libc::EINVAL;
        }
        let file = h
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match file {
            Some(file) => {
                drop(file);
                0
            }
            None => -libc::EINVAL,
        }
    })
}

/// The message of the last error in this thread. See `relay_last_error`.
#[no_mangle]
pub extern "C" fn relay_last_error() -> *const c_char {
    guard(std::ptr::null, || {
        LAST_ERROR
            .try_with(|e| {
                e.try_borrow()
                    .ok()
                    .and_then(|e| e.as_ref().map(|c| c.as_ptr()))
                    .unwrap_or(std::ptr::null())
            })
            .unwrap_or(std::ptr::null())
    })
}

/// The library's version, `"MAJOR.MINOR.PATCH"`.
#[no_mangle]
pub extern "C" fn relay_version() -> *const c_char {
    static V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr().cast()
}
