//! The atomics the protocol uses, in one place so that loom can stand in for
//! them under `cfg(loom)` (as crossbeam-utils does with its `primitive` module).
//!
//! In a normal build the shared state lives in a memory-mapped file and the
//! atomics are `std` atomics placed over that memory; under loom the same
//! protocol code runs over heap-allocated loom atomics, and the data region
//! is heap-allocated `DataCell`s, so that `tests/loom.rs` can model-check
//! reserve, commit, switch and read, and the publication of the data.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};

/// One byte of a buffer's data region in the loom build (the normal build's
/// data region is plain memory: a mapped file, reached through a raw pointer,
/// at no cost).
///
/// No-overwrite mode uses `checked`, loom's `UnsafeCell`: loom checks every
/// access against the happens-before order the protocol's atomics make, so a
/// reader that reads bytes a writer's commit has not published to it, or a
/// writer that writes bytes a reader may still be reading, fails the model
/// as a data race. Overwrite mode uses `racy`, unchecked: there a reader's
/// copy of a complete sub-buffer does race a writer of the next lap by
/// design (seqlock-style: the copy is validated afterwards with the
/// generation, and discarded if the lap changed), a race loom would report;
/// the models check what such a reader delivers by its value instead.
#[cfg(loom)]
pub(crate) struct DataCell {
    /// No-overwrite mode's byte, every access checked by loom.
    pub(crate) checked: loom::cell::UnsafeCell<u8>,
    /// Overwrite mode's byte (loom runs one thread at a time, so a racing
    /// access is not a real one).
    pub(crate) racy: std::cell::UnsafeCell<u8>,
}

#[cfg(loom)]
impl DataCell {
    /// A zero byte.
    pub(crate) fn new() -> DataCell {
        DataCell {
            checked: loom::cell::UnsafeCell::new(0),
            racy: std::cell::UnsafeCell::new(0),
        }
    }
}
