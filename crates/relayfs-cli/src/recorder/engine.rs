//! The engine both recorders share: one reader thread per buffer
//! ([`Readers`]; a reader that panics is a failed buffer), and the one loop
//! [`pump`] that moves whole sub-buffers from a [`Source`] to an [`Output`]
//! and counts them. `relay` records a relayfs channel with it, `kernel` a
//! kernel relay channel.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use super::config::OutputConfig;
use super::output::{is_sink, AfterFull, Output, Retry, Sink};
use super::report::{End, Progress};
use super::source::{Idle, Source, Undone};

/// Reader threads, one per buffer, each named `record-<buffer>`.
pub(crate) struct Readers<T> {
    threads: Vec<(String, JoinHandle<T>)>,
}

impl<T: Failed + Send + 'static> Readers<T> {
    pub(crate) fn new() -> Readers<T> {
        Readers {
            threads: Vec::new(),
        }
    }

    /// Starts `work` for buffer `name` in a thread of its own.
    pub(crate) fn spawn(
        &mut self,
        name: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<()> {
        let t = std::thread::Builder::new()
            .name(format!("record-{name}"))
            .spawn(work)?;
        self.threads.push((name.to_string(), t));
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether every reader has ended.
    pub(crate) fn all_finished(&self) -> bool {
        self.threads.iter().all(|(_, t)| t.is_finished())
    }

    /// The buffers' names, in the order started.
    pub(crate) fn names(&self) -> Vec<String> {
        self.threads.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Waits for every reader; one that panicked is a failed buffer.
    pub(crate) fn join(self) -> Vec<T> {
        self.threads
            .into_iter()
            .map(|(name, t)| {
                t.join()
                    .unwrap_or_else(|_| T::failed(&name, "reader thread panicked".into()))
            })
            .collect()
    }
}

/// What happens to a buffer whose reader thread panicked.
pub(crate) trait Failed {
    /// The result of a buffer that could not be recorded: `error` says why.
    fn failed(name: &str, error: String) -> Self;
}

/// What [`pump`] moved.
#[derive(Debug, Default)]
pub(crate) struct Moved {
    /// Bytes in the output (what a cut-back removed not counted, nor a
    /// unit an output that takes bytes did not take).
    pub(crate) bytes: u64,
    /// The output's files, kept up to date so that a recording stopped by
    /// an error lists them too.
    pub(crate) files: Vec<PathBuf>,
}

/// The buffer [`pump`] reads units into for an output that takes bytes
/// ([`Sink::Bytes`]): allocated once, at the source's unit size, when first
/// needed; `held` bytes of it are read and not yet taken.
#[derive(Default)]
struct Staged {
    buf: Vec<u8>,
    held: usize,
}

/// Why [`move_unit`] failed.
enum MoveFailed {
    /// Reading the source, or moving into a descriptor.
    Move(relayfs::ReadError),
    /// The byte sink did not take the unit.
    Sink(std::io::Error),
}

/// Moves the next unit from `src` to `sink`: the number of bytes the output
/// took (0: nothing was ready). For a byte sink a unit read stays staged
/// until the sink takes it, so that a write tried again (`--retry`) offers
/// the same bytes.
fn move_unit(src: &mut dyn Source, sink: Sink<'_>, staged: &mut Staged) -> Result<u64, MoveFailed> {
    match sink {
        Sink::Fd(f) => src.move_into_fd(f).map_err(MoveFailed::Move),
        Sink::Bytes(sink) => {
            if staged.held == 0 {
                if staged.buf.is_empty() {
                    staged.buf = vec![0; src.unit().max(1)];
                }
                staged.held = src.read_into(&mut staged.buf).map_err(MoveFailed::Move)?;
                if staged.held == 0 {
                    return Ok(0);
                }
            }
            match sink.accept(&staged.buf[..staged.held]) {
                Ok(()) => Ok(std::mem::take(&mut staged.held) as u64),
                Err(e) => Err(MoveFailed::Sink(e)),
            }
        }
    }
}

/// Moves `src` into `out` until the source says its recording ended: the
/// one loop of both recorders. Counts what it moves in `moved` and
/// `progress`; waits out a full filesystem as `retry` says; on a failed
/// write, cuts the output back to the last boundary if the source asks and
/// the output can. Into a descriptor the source moves the data itself
/// (`sendfile`); an output that takes bytes gets whole units, each read
/// into one buffer of the loop's and handed over whole, so it never holds
/// part of one.
pub(crate) fn pump(
    src: &mut dyn Source,
    out: &mut dyn Output,
    progress: &Progress,
    retry: &mut Retry<'_>,
    moved: &mut Moved,
) -> Result<End> {
    moved.files = out.files().to_vec();
    let cuts_back = src.cuts_back() && out.cuts_back();
    // Size of the current output file when the reader last stood at a
    // boundary (`None`: it started in the middle of a sub-buffer, or the
    // source or the output doesn't cut back).
    let mut kept = (cuts_back && src.at_boundary(0)).then_some(out.size());
    // Bytes of the sub-buffer being read already in the output (for an
    // output that can't cut back, what a failed write leaves torn).
    let mut since_boundary = 0u64;
    let mut staged = Staged::default();
    let end = loop {
        let n = match move_unit(src, out.sink(), &mut staged) {
            Ok(n) => n,
            Err(e) => {
                let path = out.place();
                let e = match e {
                    MoveFailed::Move(e) => e,
                    MoveFailed::Sink(source) => relayfs::ReadError::Io {
                        what: "write",
                        path: PathBuf::from(&path),
                        source,
                    },
                };
                match retry.write_failed(&src.full_place(&path), &e) {
                    Some(AfterFull::Again) => continue,
                    Some(AfterFull::Stopped) if staged.held == 0 => break End::Interrupted,
                    _ => {}
                }
                let mut undone = Undone {
                    not_taken: staged.held as u64,
                    ..Undone::default()
                };
                if let Some(k) = kept {
                    undone.cut = out.cut_back(k)?;
                } else if src.cuts_back() && !out.cuts_back() && !src.at_boundary(0) {
                    // (A unit read that finished its sub-buffer delivered
                    // the part taken before it.)
                    undone.left = since_boundary;
                }
                moved.bytes -= undone.cut;
                // SYNC POINT: Relaxed; a counter only shown.
                progress.bytes.fetch_sub(undone.cut, Ordering::Relaxed);
                return Err(src.write_error(e, &path, undone));
            }
        };
        out.wrote(n);
        since_boundary += n;
        if src.at_boundary(n) {
            since_boundary = 0;
            if retry.run(|| out.boundary())? {
                moved.files = out.files().to_vec();
            }
            if cuts_back {
                kept = Some(out.size());
            }
        }
        moved.bytes += n;
        // SYNC POINT: Relaxed; a counter only shown.
        progress.bytes.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            continue;
        }
        if let Some(lost) = src.lost() {
            // SYNC POINT: Relaxed; a counter only shown.
            progress.lost.store(lost, Ordering::Relaxed);
        }
        if let Idle::End(end) = src.idle()? {
            break end;
        }
    };
    out.finish()?;
    moved.files = out.files().to_vec();
    Ok(end)
}

/// Creates the output directory (nothing for a device sink).
pub(crate) fn create_out_dir(out: &OutputConfig) -> Result<()> {
    if !is_sink(&out.dir) {
        std::fs::create_dir_all(&out.dir)
            .with_context(|| format!("cannot create output directory {}", out.dir.display()))?;
    }
    Ok(())
}

/// Paths as a summary lists them.
pub(crate) fn file_names(files: &[PathBuf]) -> Vec<String> {
    files.iter().map(|f| f.display().to_string()).collect()
}

/// `--duration`: a timer thread that sets `stop` once `d` has passed since
/// `started` (unless `stop` was set first), and the flag it returns, which
/// says whether the time ran out.
pub(crate) fn stop_after(
    d: Option<std::time::Duration>,
    started: std::time::Instant,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(d) = d {
        let (stop, timed_out) = (stop.clone(), timed_out.clone());
        let deadline = started + d;
        std::thread::spawn(move || {
            // SYNC POINT: Relaxed; stop flags carrying no data (the
            // recorders' results come back through their joins).
            while std::time::Instant::now() < deadline {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // SYNC POINT: Relaxed, both: the caller reads `timed_out` after
            // every buffer's recording returned (joined), which the stop
            // flag caused, and the join orders this store before that read.
            timed_out.store(true, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
        });
    }
    timed_out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::output::{ByteSink, FileOutput};
    use std::io::Write;
    use std::sync::atomic::AtomicBool;

    #[derive(Debug, PartialEq)]
    struct Outcome(String, Option<String>);

    impl Failed for Outcome {
        fn failed(name: &str, error: String) -> Outcome {
            Outcome(name.into(), Some(error))
        }
    }

    #[test]
    fn a_reader_that_panics_is_a_failed_buffer_and_the_others_count() {
        let mut r = Readers::new();
        r.spawn("cpu0", || Outcome("cpu0".into(), None)).unwrap();
        r.spawn("cpu1", || -> Outcome { panic!("a bug") }).unwrap();
        assert_eq!(r.names(), ["cpu0", "cpu1"]);
        let results = r.join();
        assert_eq!(results[0], Outcome("cpu0".into(), None));
        assert_eq!(
            results[1],
            Outcome("cpu1".into(), Some("reader thread panicked".into()))
        );
    }

    /// What a scripted source does next.
    enum Step {
        /// Moves these bytes; the reader then stands at a boundary or not.
        Move(&'static [u8], bool),
        /// The write fails with this OS error.
        Fail(i32),
        /// Nothing ready, and the recording ends so.
        End(End),
    }

    /// A source that follows a script, writing to the output as a
    /// `sendfile` would.
    struct Scripted {
        steps: std::collections::VecDeque<Step>,
        boundary: bool,
        idle: Option<End>,
    }

    impl Scripted {
        fn new(steps: Vec<Step>) -> Scripted {
            Scripted {
                steps: steps.into(),
                boundary: true,
                idle: None,
            }
        }
    }

    impl Source for Scripted {
        fn move_into_fd(&mut self, mut out: &std::fs::File) -> Result<u64, relayfs::ReadError> {
            match self.steps.pop_front() {
                Some(Step::Move(b, boundary)) => {
                    out.write_all(b).unwrap();
                    self.boundary = boundary;
                    Ok(b.len() as u64)
                }
                Some(Step::Fail(code)) => Err(relayfs::ReadError::Io {
                    what: "sendfile",
                    path: PathBuf::from("cpu0"),
                    source: std::io::Error::from_raw_os_error(code),
                }),
                Some(Step::End(end)) => {
                    self.idle = Some(end);
                    Ok(0)
                }
                None => panic!("the loop went on after the script ended"),
            }
        }
        fn unit(&self) -> usize {
            unreachable!("a file output takes a descriptor")
        }
        fn read_into(&mut self, _buf: &mut [u8]) -> Result<usize, relayfs::ReadError> {
            unreachable!("a file output takes a descriptor")
        }
        fn at_boundary(&self, _n: u64) -> bool {
            self.boundary
        }
        fn cuts_back(&self) -> bool {
            true
        }
        fn idle(&mut self) -> Result<Idle> {
            Ok(self.idle.take().map_or(Idle::Again, Idle::End))
        }
        fn lost(&self) -> Option<u64> {
            Some(0)
        }
        fn full_place(&self, path: &str) -> String {
            path.into()
        }
        fn write_error(&self, e: relayfs::ReadError, path: &str, undone: Undone) -> anyhow::Error {
            anyhow::Error::new(e).context(format!(
                "cannot write {path}; cut {}; left {}",
                undone.cut, undone.left
            ))
        }
    }

    /// A file output that says it can't cut back, as a pipe couldn't.
    struct NoCut(FileOutput);

    impl Output for NoCut {
        fn sink(&mut self) -> Sink<'_> {
            self.0.sink()
        }
        fn wrote(&mut self, n: u64) {
            self.0.wrote(n)
        }
        fn files(&self) -> &[PathBuf] {
            self.0.files()
        }
        fn finish(&mut self) -> Result<()> {
            Output::finish(&mut self.0)
        }
    }

    fn run(steps: Vec<Step>, retry: bool) -> (Result<End>, Moved, u64, Vec<u8>) {
        run_with(steps, retry, true)
    }

    fn run_with(steps: Vec<Step>, retry: bool, cut: bool) -> (Result<End>, Moved, u64, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let file = FileOutput::create(d.path(), "cpu0.out", None, None).unwrap();
        let mut out: Box<dyn Output> = if cut {
            Box::new(file)
        } else {
            Box::new(NoCut(file))
        };
        let progress = Progress::default();
        let stop = AtomicBool::new(false);
        let mut retry = Retry::new(retry, Some(&stop), "the producer");
        let mut moved = Moved::default();
        let mut src = Scripted::new(steps);
        let r = pump(&mut src, &mut *out, &progress, &mut retry, &mut moved);
        let shown = progress.bytes.load(Ordering::Relaxed);
        let held = std::fs::read(d.path().join("cpu0.out")).unwrap();
        (r, moved, shown, held)
    }

    #[test]
    fn a_failed_write_cuts_the_output_back_to_the_last_boundary() {
        let (r, moved, shown, held) = run(
            vec![
                Step::Move(b"0123456789", true),
                Step::Move(b"abcde", false),
                Step::Fail(libc::EIO),
            ],
            true,
        );
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("cut 5"), "{e}");
        assert_eq!(held, b"0123456789");
        assert_eq!(moved.bytes, 10);
        assert_eq!(shown, 10);
        assert_eq!(moved.files.len(), 1);
    }

    #[test]
    fn an_output_that_cannot_cut_back_keeps_what_was_written_and_says_so() {
        let (r, moved, shown, held) = run_with(
            vec![
                Step::Move(b"0123456789", true),
                Step::Move(b"abcde", false),
                Step::Fail(libc::EIO),
            ],
            false,
            false,
        );
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("cut 0; left 5"), "{e}");
        assert_eq!(held, b"0123456789abcde");
        assert_eq!((moved.bytes, shown), (15, 15));
    }

    #[test]
    fn a_full_filesystem_is_waited_out_with_retry_and_nothing_is_doubled() {
        let steps = || {
            vec![
                Step::Move(b"0123456789", true),
                Step::Fail(libc::ENOSPC),
                Step::Move(b"abc", true),
                Step::End(End::Closed),
            ]
        };
        let (r, moved, shown, held) = run(steps(), true);
        assert_eq!(r.unwrap(), End::Closed);
        assert_eq!(held, b"0123456789abc");
        assert_eq!((moved.bytes, shown), (13, 13));
        // Without --retry the same is an error, and what was whole stays.
        let (r, moved, _, held) = run(steps(), false);
        assert!(r.is_err());
        assert_eq!(held, b"0123456789");
        assert_eq!(moved.bytes, 10);
    }

    /// An output that takes bytes and keeps each unit it is handed, as a
    /// message stream would; fails once with `fail_once` when handed unit
    /// number `at` (counted from 0), or for good from unit `fail_from` on.
    #[derive(Default)]
    struct Collect {
        units: Vec<Vec<u8>>,
        offered: usize,
        fail_once: Option<(usize, i32)>,
        fail_from: Option<usize>,
        /// Called with the number of units taken after each one.
        after: Option<Box<dyn FnMut(usize) + Send>>,
        /// The length of the last unit offered.
        offered_len: Option<usize>,
    }

    impl ByteSink for Collect {
        fn accept(&mut self, unit: &[u8]) -> std::io::Result<()> {
            let i = self.offered;
            self.offered += 1;
            self.offered_len = Some(unit.len());
            if let Some((at, code)) = self.fail_once {
                if i == at {
                    return Err(std::io::Error::from_raw_os_error(code));
                }
            }
            if self.fail_from.is_some_and(|n| self.units.len() >= n) {
                return Err(std::io::Error::other("the server refused the message"));
            }
            self.units.push(unit.to_vec());
            if let Some(after) = &mut self.after {
                after(self.units.len());
            }
            Ok(())
        }
    }

    impl Output for Collect {
        fn sink(&mut self) -> Sink<'_> {
            Sink::Bytes(self)
        }
        fn wrote(&mut self, _n: u64) {}
        fn files(&self) -> &[PathBuf] {
            &[]
        }
        fn place(&self) -> String {
            "collect://test".into()
        }
        fn finish(&mut self) -> Result<()> {
            Ok(())
        }
    }

    const SUBBUF: u64 = 4096;
    const RECORD: usize = 100;

    /// Record `i` of the producer: `RECORD` bytes, each `i` spread out.
    fn record(i: usize) -> Vec<u8> {
        (0..RECORD).map(|k| (i * 7 + k) as u8).collect()
    }

    /// A one-buffer channel holding `n` records (in sub-buffers of
    /// `SUBBUF` bytes, never full), closed unless `live`, and its buffer
    /// opened by a reader before the close.
    fn channel_with(
        d: &std::path::Path,
        n: usize,
        live: bool,
        mode: relayfs::Mode,
    ) -> (relayfs::RelayFile, Option<relayfs::Channel>) {
        let chan = relayfs::Channel::builder("c")
            .dir(d)
            .global(true)
            .mode(mode)
            .subbuf_size(SUBBUF)
            .n_subbufs(64)
            .open()
            .unwrap();
        let f = relayfs::RelayFile::open(chan.buffer_path(0)).unwrap();
        for i in 0..n {
            chan.write(&record(i)).unwrap();
        }
        if live {
            return (f, Some(chan));
        }
        // Every write was taken (`unwrap` above), none lost at the close.
        assert_eq!(chan.close().unwrap().lost(), 0);
        (f, None)
    }

    /// Pumps a channel of `n` records into `out`: the result, the bytes
    /// counted moved and shown, and the buffer's counters at the end. With
    /// `live` the producer stays, quiet, until the pump returns.
    fn pump_channel(
        n: usize,
        out: &mut Collect,
        retry: bool,
    ) -> (Result<End>, u64, u64, relayfs::BufferStats) {
        pump_channel_with(n, out, retry, false, relayfs::Mode::NoOverwrite)
    }

    fn pump_channel_with(
        n: usize,
        out: &mut Collect,
        retry: bool,
        live: bool,
        mode: relayfs::Mode,
    ) -> (Result<End>, u64, u64, relayfs::BufferStats) {
        let d = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        let (f, chan) = channel_with(d.path(), n, live, mode);
        let mut src = crate::recorder::source::RelaySource::new(f, &stop);
        let progress = Progress::default();
        let mut retry = Retry::new(retry, Some(&stop), "the producer");
        let mut moved = Moved::default();
        let r = pump(&mut src, out, &progress, &mut retry, &mut moved);
        let shown = progress.bytes.load(Ordering::Relaxed);
        let stats = src.f.stats();
        if let Some(chan) = chan {
            chan.close().unwrap();
        }
        (r, moved.bytes, shown, stats)
    }

    /// Records per sub-buffer, and the bytes of a full sub-buffer's data.
    fn per_subbuf() -> (usize, usize) {
        let k = SUBBUF as usize / RECORD;
        (k, k * RECORD)
    }

    /// The records in `units`, checked to be whole and in order from 0.
    fn records_in(units: &[Vec<u8>]) -> usize {
        let all: Vec<u8> = units.concat();
        assert_eq!(all.len() % RECORD, 0);
        for (i, r) in all.chunks(RECORD).enumerate() {
            assert_eq!(r, record(i), "record {i}");
        }
        for u in units {
            assert_eq!(u.len() % RECORD, 0, "a unit that splits a record");
        }
        all.len() / RECORD
    }

    #[test]
    fn an_output_that_takes_bytes_gets_every_sub_buffer_once_and_whole() {
        let (k, full) = per_subbuf();
        // Five full sub-buffers and part of a sixth.
        let n = 5 * k + k / 2;
        for mode in [relayfs::Mode::NoOverwrite, relayfs::Mode::Overwrite] {
            let mut out = Collect::default();
            let (r, bytes, shown, stats) = pump_channel_with(n, &mut out, false, false, mode);
            assert_eq!(r.unwrap(), End::Closed, "{mode:?}");
            assert_eq!(records_in(&out.units), n, "{mode:?}");
            // Whole sub-buffers, one unit each; the partial last one whole
            // too.
            let lens: Vec<usize> = out.units.iter().map(|u| u.len()).collect();
            let mut want = vec![full; 5];
            want.push((k / 2) * RECORD);
            assert_eq!(lens, want, "{mode:?}");
            assert_eq!(bytes, (n * RECORD) as u64, "{mode:?}");
            assert_eq!(shown, bytes, "{mode:?}");
            assert_eq!(stats.records_consumed, n as u64, "{mode:?}");
            assert_eq!(stats.lost(), 0, "{mode:?}");
        }
    }

    #[test]
    fn a_byte_sink_that_fails_is_reported_exactly_and_holds_no_torn_unit() {
        let (k, full) = per_subbuf();
        let n = 5 * k;
        let taken = 2;
        let mut out = Collect {
            fail_from: Some(taken),
            ..Collect::default()
        };
        let (r, bytes, shown, stats) = pump_channel(n, &mut out, true);
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("collect://test"), "{e}");
        assert!(e.contains("the server refused the message"), "{e}");
        // The unit read and not taken is said, with its size.
        assert!(
            e.contains(&format!(
                "the {full} bytes read last were not taken and are lost (the buffer counts them delivered)"
            )),
            "{e}"
        );
        assert_eq!(out.units.len(), taken);
        assert_eq!(records_in(&out.units), taken * k);
        assert!(out.units.iter().all(|u| u.len() == full));
        // Counted: exactly what the output took, nothing of the unit refused.
        assert_eq!(bytes, (taken * full) as u64);
        assert_eq!(shown, bytes);
        // The buffer consumed the refused unit too, as the error says.
        assert_eq!(stats.records_consumed, ((taken + 1) * k) as u64);
    }

    #[test]
    fn a_partial_sub_buffer_not_taken_is_not_counted_delivered() {
        let (k, full) = per_subbuf();
        // Two full sub-buffers, then part of a third, taken once the quiet
        // producer's poll times out, and refused.
        let n = 2 * k + k / 2;
        let mut out = Collect {
            fail_from: Some(2),
            ..Collect::default()
        };
        let (r, bytes, _, stats) =
            pump_channel_with(n, &mut out, false, true, relayfs::Mode::NoOverwrite);
        let e = format!("{:#}", r.unwrap_err());
        let part = (k / 2) * RECORD;
        assert!(
            e.contains(&format!(
                "the {part} bytes read last were not taken and are lost (the buffer counts their sub-buffer as not delivered)"
            )),
            "{e}"
        );
        assert_eq!(records_in(&out.units), 2 * k);
        assert_eq!(bytes, 2 * full as u64);
        assert_eq!(stats.records_consumed, 2 * k as u64);
    }

    #[test]
    fn a_unit_that_finishes_a_sub_buffer_not_taken_is_counted_delivered_and_lost() {
        let (k, full) = per_subbuf();
        let d = tempfile::tempdir().unwrap();
        // Two full sub-buffers and half of a third: the pump takes that
        // half once the quiet producer's poll times out; the producer then
        // fills the third (and starts a fourth), and the rest of the third
        // is refused.
        let (f, chan) = channel_with(d.path(), 2 * k + k / 2, true, relayfs::Mode::NoOverwrite);
        let chan = std::sync::Arc::new(chan.unwrap());
        let producer = chan.clone();
        let mut out = Collect {
            fail_from: Some(3),
            after: Some(Box::new(move |taken| {
                if taken == 3 {
                    for i in 2 * k + k / 2..3 * k + 1 {
                        producer.write(&record(i)).unwrap();
                    }
                }
            })),
            ..Collect::default()
        };
        let stop = AtomicBool::new(false);
        let mut src = crate::recorder::source::RelaySource::new(f, &stop);
        let progress = Progress::default();
        let mut retry = Retry::new(false, Some(&stop), "the producer");
        let mut moved = Moved::default();
        let r = pump(&mut src, &mut out, &progress, &mut retry, &mut moved);
        let e = format!("{:#}", r.unwrap_err());
        let rest = (k - k / 2) * RECORD;
        assert!(
            e.contains(&format!(
                "the {rest} bytes read last were not taken and are lost (the buffer counts them delivered)"
            )),
            "{e}"
        );
        // What the output took before is delivered: not said to be left.
        assert!(!e.contains("already in the output"), "{e}");
        assert_eq!(records_in(&out.units), 2 * k + k / 2);
        assert_eq!(moved.bytes, (2 * full + (k / 2) * RECORD) as u64);
        assert_eq!(src.f.stats().records_consumed, 3 * k as u64);
    }

    #[test]
    fn a_unit_still_refused_when_the_recording_stops_is_an_error_not_an_interruption() {
        let (k, full) = per_subbuf();
        let d = tempfile::tempdir().unwrap();
        let (f, _) = channel_with(d.path(), 2 * k, false, relayfs::Mode::NoOverwrite);
        // Stopped already: a full sink is not waited for.
        let stop = AtomicBool::new(true);
        let mut src = crate::recorder::source::RelaySource::new(f, &stop);
        let mut out = Collect {
            fail_once: Some((0, libc::ENOSPC)),
            ..Collect::default()
        };
        let progress = Progress::default();
        let mut retry = Retry::new(true, Some(&stop), "the producer");
        let mut moved = Moved::default();
        let r = pump(&mut src, &mut out, &progress, &mut retry, &mut moved);
        let e = format!("{:#}", r.unwrap_err());
        assert!(
            e.contains(&format!("the {full} bytes read last were not taken")),
            "{e}"
        );
        assert_eq!((out.offered, moved.bytes), (1, 0));
    }

    #[test]
    fn a_full_byte_sink_is_waited_out_with_retry_and_the_same_unit_offered_again() {
        let (k, full) = per_subbuf();
        let n = 3 * k;
        let mut out = Collect {
            fail_once: Some((1, libc::ENOSPC)),
            ..Collect::default()
        };
        let (r, bytes, _, stats) = pump_channel(n, &mut out, true);
        assert_eq!(r.unwrap(), End::Closed);
        // Offered once more than taken; nothing doubled, nothing missing.
        assert_eq!(out.offered, out.units.len() + 1);
        assert_eq!(records_in(&out.units), n);
        assert!(out.units.iter().all(|u| u.len() == full));
        assert_eq!(bytes, (n * RECORD) as u64);
        assert_eq!(stats.records_consumed, n as u64);
        // Without --retry the same is an error, after the first unit.
        let mut out = Collect {
            fail_once: Some((1, libc::ENOSPC)),
            ..Collect::default()
        };
        let (r, bytes, _, _) = pump_channel(n, &mut out, false);
        assert!(r.is_err());
        assert_eq!(out.units.len(), 1);
        assert_eq!(bytes, full as u64);
    }

    /// A kernel relay file's source, with a FIFO standing in for the relay
    /// file (reads consume, `poll` says when the writer is gone), holding
    /// `data`, written and closed: the pump's result and what it counted.
    fn pump_kernel(data: &[u8], out: &mut Collect) -> (Result<End>, u64) {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("trace0");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let f = relayfs::KernelRelayFile::open(&fifo).unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        w.write_all(data).unwrap();
        drop(w);
        let (drain, gate) = (
            AtomicBool::new(false),
            crate::recorder::source::Gate::default(),
        );
        let mut src = crate::recorder::source::KernelSource::new("trace0".into(), f, &drain, &gate);
        let progress = Progress::default();
        let mut retry = Retry::new(false, None, "the kernel");
        let mut moved = Moved::default();
        let r = pump(&mut src, out, &progress, &mut retry, &mut moved);
        (r, moved.bytes)
    }

    #[test]
    fn a_kernel_relay_file_goes_to_an_output_that_takes_bytes_once() {
        // Less than a pipe holds, so that the writer never waits.
        let data: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Collect::default();
        let (r, bytes) = pump_kernel(&data, &mut out);
        assert_eq!(r.unwrap(), End::Closed);
        assert_eq!(out.units.concat(), data);
        assert_eq!(bytes, data.len() as u64);
        // Refused for good: what was read and not taken is said.
        let mut out = Collect {
            fail_from: Some(0),
            ..Collect::default()
        };
        let (r, bytes) = pump_kernel(&data, &mut out);
        let e = format!("{:#}", r.unwrap_err());
        assert!(out.units.is_empty());
        assert_eq!(bytes, 0);
        let n = out.offered_len.unwrap();
        assert!(n > 0);
        assert!(
            e.contains(&format!(
                "the {n} bytes read last were not taken by the output and are lost"
            )),
            "{e}"
        );
    }
}
