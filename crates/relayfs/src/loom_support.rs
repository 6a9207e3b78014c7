//! A buffer on the heap, over loom's atomics, for model-checking the
//! protocol (`RUSTFLAGS="--cfg loom" cargo test --release --test loom`).
//! Only compiled under `cfg(loom)`.

use crate::buffer::{Avail, BufferStats, Hooks, Shared, SwitchInfo};
use crate::cursor::Cursor;
use crate::layout::{desc, hdr, rdr, Geometry, FLAG_OVERWRITE};
use crate::sync::{AtomicU64, DataCell, Ordering};
use crate::WriteError;

/// A buffer whose shared state lives in loom atomics.
#[allow(missing_debug_implementations)]
pub struct LoomBuffer {
    shared: Shared,
    _hdr: Box<[AtomicU64]>,
    _desc: Box<[AtomicU64]>,
    _rdr: Box<[AtomicU64]>,
    _data: Box<[DataCell]>,
}

// SAFETY: see `Shared`; the boxes only keep the memory alive.
unsafe impl Sync for LoomBuffer {}
// SAFETY: as above.
unsafe impl Send for LoomBuffer {}

struct NoHooks;

impl Hooks for NoHooks {
    fn may_open(&self, info: &SwitchInfo) -> bool {
        info.overwrite || !info.full
    }
    fn write_header(&self, _info: &SwitchInfo, _header: &mut [u8]) {}
    fn wake_reader(&self) {}
    fn map_changed(&self, _mapped: u64) {}
}

fn atomics(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl LoomBuffer {
    /// A buffer of `n_subbufs` sub-buffers of `subbuf_size` bytes.
    pub fn new(subbuf_size: u64, n_subbufs: u64, overwrite: bool) -> LoomBuffer {
        let g = Geometry::new(subbuf_size, n_subbufs, 0, 4096).expect("geometry");
        let h = atomics(hdr::END / 8);
        let d = atomics(n_subbufs as usize * desc::SIZE / 8);
        let r = atomics(rdr::CLAIMS / 8 + n_subbufs as usize);
        let data: Box<[DataCell]> = (0..g.data_len()).map(|_| DataCell::new()).collect();
        let flags = if overwrite { FLAG_OVERWRITE } else { 0 };
        // SAFETY: the boxes hold the header fields, descriptors and reader
        // page the geometry asks for, indexed as `Shared` indexes them, and
        // live as long as `shared` (same struct). The raw data pointer is
        // never used in the loom build (the cells below are).
        let mut shared = unsafe {
            Shared::new(
                g,
                h.as_ptr(),
                d.as_ptr(),
                r.as_ptr(),
                std::ptr::null_mut(),
                flags,
            )
        };
        // SAFETY: `data` holds data_len() cells and lives as long as
        // `shared` (same struct).
        unsafe { shared.set_data_cells(data.as_ptr()) };
        shared.init_state();
        LoomBuffer {
            shared,
            _hdr: h,
            _desc: d,
            _rdr: r,
            _data: data,
        }
    }

    /// `relay_write` into this buffer.
    ///
    /// # Errors
    /// As `Channel::write`.
    pub fn write(&self, data: &[u8]) -> Result<(), WriteError> {
        if data.len() as u64 > self.shared.geometry().max_record() {
            return Err(self.shared.drop_toobig(data.len()));
        }
        let r = self.shared.reserve(data.len() as u64, &NoHooks)?;
        self.shared.write_at(r.pos, data);
        self.shared.commit(r, &NoHooks);
        Ok(())
    }

    /// `relay_flush`.
    pub fn flush(&self) {
        self.shared.flush(&NoHooks);
    }

    /// The counters.
    pub fn stats(&self) -> BufferStats {
        self.shared.stats()
    }

    /// The mapping reader's protocol, once: `Mapping::ready`, a copy of the
    /// sub-buffer, then `Mapping::consume` (or, `kernel_path`,
    /// `Mapping::still_valid` and `Mapping::subbufs_consumed(1)`). `None`:
    /// nothing ready; `Some(None)`: the copy was torn (and counted so).
    ///
    /// # Panics
    /// If the state is corrupt or the protocol is broken.
    pub fn map_read(&self, kernel_path: bool) -> Option<Option<Vec<u8>>> {
        let s = &self.shared;
        let (ord, end, _records) = s.map_ready(false).expect("corrupt state")?;
        let mut copy = vec![0u8; end as usize];
        s.copy_out(ord % s.geometry().n_subbufs, 0, &mut copy);
        let good = if kernel_path {
            let good = s.still_valid(ord);
            let n = s
                .subbufs_consumed(1, s.is_overwrite(), Some((ord, good)))
                .expect("corrupt state");
            assert_eq!(n, 1, "the held sub-buffer is consumed");
            good
        } else {
            s.consume_held(ord, None)
                .expect("the sub-buffer ready returned")
        };
        Some(good.then_some(copy))
    }

    /// A reader killed while it takes the complete sub-buffer at the
    /// reader's position, as `read` takes it (`Cursor::next_chunk`): it
    /// recorded it as held and stopped (`Killed::Held`), or claimed it too
    /// (`Killed::Claimed`), or also copied it and delivered the copy, found
    /// good, and stopped before counting it (`Killed::Delivered`; a torn
    /// copy is not delivered). Returns what it delivered.
    ///
    /// # Panics
    /// If the state is corrupt.
    pub fn killed_reader(&self, at: Killed) -> Vec<u8> {
        let s = &self.shared;
        // SYNC POINT: Acquire, as `Cursor::load`.
        let ord = s.reader_word(rdr::CONSUMED).load(Ordering::Acquire);
        let Avail::Complete { end, records } = s.available(ord, false).expect("corrupt state")
        else {
            return Vec::new();
        };
        if at == Killed::Held {
            // What `claim_held` stores before its claim CAS.
            // SYNC POINT: Relaxed, as in `claim_held`.
            s.reader_word(rdr::HELD_LEN).store(end, Ordering::Relaxed);
            s.reader_word(rdr::HELD_RECORDS)
                .store(records, Ordering::Relaxed);
            s.reader_word(rdr::HELD).store(ord + 1, Ordering::Relaxed);
            return Vec::new();
        }
        if !s.claim_held(ord, end, records) || at == Killed::Claimed {
            return Vec::new();
        }
        let mut copy = vec![0u8; end as usize];
        s.copy_out(ord % s.geometry().n_subbufs, 0, &mut copy);
        if !s.still_valid(ord) {
            return Vec::new();
        }
        // Delivered: `Cursor::consume`'s position store, before it counts.
        // SYNC POINT: Relaxed, as there.
        s.reader_word(rdr::READ_POS).store(end, Ordering::Relaxed);
        copy
    }

    /// A reader at the start.
    pub fn reader(&self) -> LoomReader {
        LoomReader {
            cur: Cursor::new(&self.shared),
        }
    }
}

/// How far [`LoomBuffer::killed_reader`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    /// Recorded the sub-buffer as held, not claimed.
    Held,
    /// Claimed it, copied nothing.
    Claimed,
    /// Delivered a good copy of it, did not count it.
    Delivered,
}

/// A reader of a [`LoomBuffer`], running the same cursor as `RelayFile`.
#[allow(missing_debug_implementations)]
pub struct LoomReader {
    cur: Cursor,
}

impl LoomReader {
    /// Consuming read.
    ///
    /// # Panics
    /// If the state is corrupt.
    pub fn read(&mut self, buf: &LoomBuffer, out: &mut [u8]) -> usize {
        self.cur.read(&buf.shared, out).expect("corrupt state")
    }
}
