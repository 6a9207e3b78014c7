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
use super::output::{is_sink, AfterFull, Output, Retry};
use super::report::{End, Progress};
use super::source::{Idle, Source};

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
    /// Bytes in the output (what a cut-back removed not counted).
    pub(crate) bytes: u64,
    /// The output's files, kept up to date so that a recording stopped by
    /// an error lists them too.
    pub(crate) files: Vec<PathBuf>,
}

/// Moves `src` into `out` until the source says its recording ended: the
/// one loop of both recorders. Counts what it moves in `moved` and
/// `progress`; waits out a full filesystem as `retry` says; on a failed
/// write, cuts the output back to the last boundary if the source asks.
pub(crate) fn pump(
    src: &mut dyn Source,
    out: &mut dyn Output,
    progress: &Progress,
    retry: &mut Retry<'_>,
    moved: &mut Moved,
) -> Result<End> {
    moved.files = out.files().to_vec();
    // Size of the current output file when the reader last stood at a
    // boundary (`None`: it started in the middle of a sub-buffer, or the
    // source doesn't cut back).
    let mut kept = (src.cuts_back() && src.at_boundary(0)).then_some(out.size());
    let end = loop {
        let n = match src.move_into(out.file()) {
            Ok(n) => n,
            Err(e) => {
                let path = out
                    .files()
                    .last()
                    .map_or(String::new(), |p| p.display().to_string());
                match retry.write_failed(&src.full_place(&path), &e) {
                    Some(AfterFull::Again) => continue,
                    Some(AfterFull::Stopped) => break End::Interrupted,
                    None => {}
                }
                let cut = match kept {
                    Some(k) => out.cut_back(k)?,
                    None => 0,
                };
                moved.bytes -= cut;
                // SYNC POINT: Relaxed; a counter only shown.
                progress.bytes.fetch_sub(cut, Ordering::Relaxed);
                return Err(src.write_error(e, &path, cut));
            }
        };
        out.wrote(n);
        if src.at_boundary(n) {
            if retry.run(|| out.boundary())? {
                moved.files = out.files().to_vec();
            }
            if src.cuts_back() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::output::FileOutput;
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
        fn move_into(&mut self, mut out: &std::fs::File) -> Result<u64, relayfs::ReadError> {
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
        fn write_error(&self, e: relayfs::ReadError, path: &str, cut: u64) -> anyhow::Error {
            anyhow::Error::new(e).context(format!("cannot write {path}; cut {cut}"))
        }
    }

    fn run(steps: Vec<Step>, retry: bool) -> (Result<End>, Moved, u64, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let mut out = FileOutput::create(d.path(), "cpu0.out", None, None).unwrap();
        let progress = Progress::default();
        let stop = AtomicBool::new(false);
        let mut retry = Retry::new(retry, Some(&stop), "the producer");
        let mut moved = Moved::default();
        let mut src = Scripted::new(steps);
        let r = pump(&mut src, &mut out, &progress, &mut retry, &mut moved);
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
}
