//! The atomics the protocol uses, in one place so that loom can stand in for
//! them under `cfg(loom)` (as crossbeam-utils does with its `primitive` module).
//!
//! In a normal build the shared state lives in a memory-mapped file and the
//! atomics are `std` atomics placed over that memory; under loom the same
//! protocol code runs over heap-allocated loom atomics, so that
//! `tests/loom.rs` can model-check reserve, commit, switch and read.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};
