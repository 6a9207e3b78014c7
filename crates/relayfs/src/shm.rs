//! Buffer files in shared memory: allocation, mapping and the locks that say
//! who holds a buffer.
//!
//! # Safety
//!
//! A relay buffer file is memory shared with other processes. The producer
//! maps it whole, read-write. A reader maps the header and descriptors
//! read-only, its reader page read-write and the data read-only: it can't
//! write anything the producer relies on. What the producer reads from the
//! reader page (the consumed position, the wait flag, claim words) is only
//! compared and clamped, never used as an address.
//!
//! Like any shared mapping (see memmap2's `Mmap`), the memory can change
//! under us at any time. Everything the protocol reads concurrently is read
//! through atomics; data bytes are copied out with `copy_nonoverlapping` and,
//! where another writer could have changed them, validated after the copy.
//! Truncating a mapped file makes later accesses fault (`SIGBUS`): only the
//! owner of the files (who could equally kill the reader) can do that.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{FormatError, ReadError};
use crate::layout::{hdr, BufferHeader, Geometry};
use crate::sync::AtomicU64;

/// The system page size.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Byte of the buffer file the producer write-locks while it lives.
pub(crate) const PRODUCER_LOCK_BYTE: i64 = 0;
/// Byte of the buffer file a reader write-locks while it reads.
pub(crate) const READER_LOCK_BYTE: i64 = 1;

fn flock_struct(kind: libc::c_short, byte: i64) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    fl
}

/// Takes an open-file-description write lock on one byte of `file`
/// (`fcntl(F_OFD_SETLK)`): released when the file is closed, including when
/// the process dies. `Ok(false)`: someone else holds it.
pub(crate) fn try_lock_byte(file: &File, byte: i64) -> io::Result<bool> {
    let fl = flock_struct(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: F_OFD_SETLK with a valid flock struct on an open fd.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Releases a lock [`try_lock_byte`] took through the same open file
/// description.
pub(crate) fn unlock_byte(file: &File, byte: i64) -> io::Result<()> {
    let fl = flock_struct(libc::F_UNLCK as libc::c_short, byte);
    // SAFETY: F_OFD_SETLK with a valid flock struct on an open fd.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether some open file description holds a lock on `byte`
/// (`fcntl(F_OFD_GETLK)`).
pub(crate) fn byte_locked(file: &File, byte: i64) -> io::Result<bool> {
    let mut fl = flock_struct(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: F_OFD_GETLK with a valid, writable flock struct on an open fd.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Allocates `len` bytes of backing store up front (`posix_fallocate(3)`), so
/// that a full tmpfs fails here and not with `SIGBUS` in the middle of a
/// write.
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: posix_fallocate on an open fd with a non-negative range.
    let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

fn atomic_ptr(map: &MmapRaw, off: u64) -> *const AtomicU64 {
    debug_assert!(off as usize <= map.len());
    // SAFETY: `off` is within the mapping (callers pass region offsets of a
    // validated geometry whose regions the mapping covers); mmap returns
    // page-aligned memory, so 8-aligned offsets give aligned atomics.
    unsafe { map.as_ptr().add(off as usize) as *const AtomicU64 }
}

/// Where the regions of a mapped buffer file are: the header page, the
/// descriptors, the reader page and the data. Valid, aligned and of the
/// sizes of the geometry it was mapped with, as long as the mapping that
/// handed it out lives (see `buffer::Mapped`, which keeps the two together).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Regions {
    pub hdr: *const AtomicU64,
    pub desc: *const AtomicU64,
    pub rdr: *const AtomicU64,
    pub data: *mut u8,
}

/// The producer's mapping of a whole buffer file, read-write.
#[derive(Debug)]
pub(crate) struct ProducerMap {
    map: MmapRaw,
    g: Geometry,
}

impl ProducerMap {
    /// Maps an allocated, `g.file_size`-byte file read-write. The caller
    /// initialises what is in it (`buffer::Mapped::create`).
    pub(crate) fn create(file: &File, g: Geometry) -> io::Result<Self> {
        // MAP_POPULATE: fault every page in now, not on the write path
        // (lttng-ust made the same choice).
        let map = MmapOptions::new()
            .len(g.file_size as usize)
            .populate()
            .map_raw(file)?;
        Ok(ProducerMap { map, g })
    }

    /// The regions of the mapping.
    pub(crate) fn regions(&self) -> Regions {
        let g = &self.g;
        Regions {
            hdr: atomic_ptr(&self.map, 0),
            desc: atomic_ptr(&self.map, g.desc_offset),
            rdr: atomic_ptr(&self.map, g.reader_offset),
            // SAFETY: the mapping spans g.file_size bytes, which holds the
            // data at g.data_offset.
            data: unsafe { self.map.as_mut_ptr().add(g.data_offset as usize) },
        }
    }
}

/// Reads (`pread`) and validates the header of an open buffer file.
///
/// # Errors
/// `ReadError::Format` if it is not a valid buffer file, `ReadError::Io` if
/// it can't be read.
pub(crate) fn read_header(file: &File, path: &Path) -> Result<BufferHeader, ReadError> {
    let len = file
        .metadata()
        .map_err(|e| ReadError::io("stat", path, e))?
        .len();
    let fmt = |source: FormatError| ReadError::Format {
        path: path.to_path_buf(),
        source,
    };
    let mut page = [0u8; hdr::END];
    if len < page.len() as u64 {
        return Err(fmt(FormatError::Truncated {
            expected: page.len() as u64,
            actual: len,
        }));
    }
    std::os::unix::fs::FileExt::read_exact_at(file, &mut page, 0)
        .map_err(|e| ReadError::io("read", path, e))?;
    BufferHeader::decode(&page, len, page_size()).map_err(fmt)
}

/// A reader's mappings of a buffer file: header and descriptors read-only,
/// reader page read-write, data read-only.
#[derive(Debug)]
pub(crate) struct ReaderMap {
    meta: MmapRaw,
    rdr: MmapRaw,
    data: MmapRaw,
    desc_offset: u64,
}

impl ReaderMap {
    /// Validates the header of `file` ([`read_header`]) and maps it.
    ///
    /// # Errors
    /// `ReadError::Format` if the file is not a valid buffer file.
    /// With `writable` false the reader page is mapped read-only too (for
    /// looking at a buffer without reading it).
    pub(crate) fn open(
        file: &File,
        path: &Path,
        writable: bool,
    ) -> Result<(Self, BufferHeader), ReadError> {
        let header = read_header(file, path)?;
        let g = header.geometry;
        let meta = MmapOptions::new()
            .len(g.reader_offset as usize)
            .map_raw_read_only(file)
            .map_err(|e| ReadError::io("mmap", path, e))?;
        let mut opts = MmapOptions::new();
        opts.offset(g.reader_offset).len(g.reader_len as usize);
        let rdr = if writable {
            opts.map_raw(file)
        } else {
            opts.map_raw_read_only(file)
        }
        .map_err(|e| ReadError::io("mmap", path, e))?;
        // A reader's data mapping is populated at once (one walk of the page
        // tables, rather than a fault every few pages as the data is read),
        // but only if every byte of the file is allocated: on tmpfs a read
        // fault of a hole allocates a page, so populating a sparse file
        // (not one `relay_open` made: it allocates the whole file) would
        // allocate all of it. A look that reads no data (`inspect`, not
        // `writable`) maps nothing in.
        let allocated = file
            .metadata()
            .is_ok_and(|m| m.blocks().saturating_mul(512) >= g.file_size);
        let mut opts = MmapOptions::new();
        opts.offset(g.data_offset).len(g.data_len() as usize);
        if writable && allocated {
            opts.populate();
        }
        let data = opts
            .map_raw_read_only(file)
            .map_err(|e| ReadError::io("mmap", path, e))?;
        Ok((
            ReaderMap {
                meta,
                rdr,
                data,
                desc_offset: g.desc_offset,
            },
            header,
        ))
    }

    /// The regions of the mappings, which cover those of the validated
    /// geometry (the file is at least `g.file_size` bytes long). The
    /// read-only ones (and the reader page, when not mapped writable) must
    /// only ever be loaded from: readers do.
    pub(crate) fn regions(&self) -> Regions {
        Regions {
            hdr: atomic_ptr(&self.meta, 0),
            desc: atomic_ptr(&self.meta, self.desc_offset),
            rdr: atomic_ptr(&self.rdr, 0),
            data: self.data.as_mut_ptr(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_locks_are_exclusive_per_open_file_and_released_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, [0u8; 16]).unwrap();
        let rw = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap()
        };
        let a = rw();
        let b = rw();
        assert!(!byte_locked(&b, PRODUCER_LOCK_BYTE).unwrap());
        assert!(try_lock_byte(&a, PRODUCER_LOCK_BYTE).unwrap());
        assert!(byte_locked(&b, PRODUCER_LOCK_BYTE).unwrap());
        assert!(!try_lock_byte(&b, PRODUCER_LOCK_BYTE).unwrap());
        assert!(
            try_lock_byte(&b, READER_LOCK_BYTE).unwrap(),
            "other bytes are free"
        );
        drop(a);
        assert!(try_lock_byte(&b, PRODUCER_LOCK_BYTE).unwrap());
    }

    #[test]
    fn allocate_reports_no_space() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("g")).unwrap();
        allocate(&f, 8192).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 8192);
        assert!(allocate(&f, u64::MAX / 2).is_err());
    }
}
