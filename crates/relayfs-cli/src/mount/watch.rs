//! The watcher: one thread that sleeps in `poll(2)` on the wakeup FIFOs of
//! the buffers someone waits for (a `--follow` read, a `poll`), and answers
//! them when the producer wakes it, so that the filesystem's own loop never
//! blocks.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::Errno;
use rustix::event::{PollFd, PollFlags, Timespec};

use super::fs::{lock, signal_pending, Answer, Handle, PendingRead};

/// How often a waiting buffer is looked at without a wakeup: a producer's
/// death is noticed through its lock (its FIFO hangs up too), a partly
/// filled sub-buffer wakes nobody (as in the kernel), and a reader
/// interrupted by a signal is answered.
const LOOK_INTERVAL: Duration = Duration::from_millis(200);

/// After the FIFO hung up the buffer ends within a moment (the producer
/// closed it, or its lock goes as its process exits): looked at this often.
const HUP_INTERVAL: Duration = Duration::from_millis(10);

/// The handle for the filesystem's side: tells the thread what to watch.
#[derive(Clone)]
pub struct Watcher {
    inner: Arc<Inner>,
}

struct Inner {
    waiting: Mutex<HashMap<u64, Arc<Handle>>>,
    kick_w: OwnedFd,
    /// The mount is ending: waiting reads get `ENOTCONN` (what a reader of
    /// a mount that is gone gets), waiting polls are woken.
    stopping: AtomicBool,
}

impl Watcher {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Watcher> {
        let (r, w) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        let inner = Arc::new(Inner {
            waiting: Mutex::new(HashMap::new()),
            kick_w: w,
            stopping: AtomicBool::new(false),
        });
        let i = inner.clone();
        std::thread::Builder::new()
            .name("relayfs-watch".into())
            .spawn(move || run(&i, r))?;
        Ok(Watcher { inner })
    }

    /// Watches open file `fh` until what waits on it is answered.
    pub fn watch(&self, fh: u64, h: &Arc<Handle>) {
        lock(&self.inner.waiting).insert(fh, h.clone());
        self.kick();
    }

    /// Stops watching `fh` (released).
    pub fn unwatch(&self, fh: u64) {
        lock(&self.inner.waiting).remove(&fh);
        self.kick();
    }

    /// The mount is ending: answers every waiting read with `ENOTCONN`
    /// (and every read that would wait from now on), wakes waiting polls,
    /// so that no reader keeps the unmounted filesystem alive by waiting.
    pub fn stop(&self) {
        // SYNC POINT: SeqCst pairs with `look`'s load; the kick after it
        // makes the thread look again.
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.kick();
    }

    fn kick(&self) {
        // A full pipe already wakes the thread.
        let _ = rustix::io::write(&self.inner.kick_w, &[1]);
    }
}

/// What a look at one buffer found.
enum Look {
    /// Nothing waits on it any more.
    Done,
    /// Armed: sleep on its FIFO.
    Wait,
    /// Its FIFO hung up: look again soon.
    Hup,
}

/// Answers what it can of `h`: waiting reads in order, then a waiting poll;
/// arms the wakeup if something still waits.
fn look(inner: &Inner, fh: u64, h: &Arc<Handle>) -> Look {
    let mut st = lock(&h.state);
    // Done: no longer watched. Taken off the list while the handle's lock
    // is held, so that a read queued meanwhile (which puts the handle back
    // after letting go of that lock) is never left unanswered.
    let done = |_st: &mut super::fs::HandleState| {
        let mut w = lock(&inner.waiting);
        if w.get(&fh).is_some_and(|x| Arc::ptr_eq(x, h)) {
            w.remove(&fh);
        }
        Look::Done
    };
    loop {
        if st.released() {
            return done(&mut st);
        }
        // SYNC POINT: SeqCst pairs with `stop`'s store; the kick after it
        // makes the thread look again, so no waiter is missed.
        if inner.stopping.load(Ordering::SeqCst) {
            for p in st.pending.drain(..) {
                p.reply.error(Errno::ENOTCONN);
            }
            if let Some(ph) = st.poll.take() {
                let _ = ph.notify();
            }
            return done(&mut st);
        }
        while let Some(p) = st.pending.pop_front() {
            // A reader with a signal waiting gets EINTR before anything is
            // consumed for it: if the signal kills it (SIGKILL, or Ctrl-C on
            // `cat`), the kernel throws the reply away with the process, and
            // bytes consumed for it would be lost without being counted.
            // The data stays for the next read.
            if signal_pending(p.pid) {
                p.reply.error(Errno::EINTR);
                continue;
            }
            let PendingRead { reply, size, pid } = p;
            let reply = match st.answer(size, reply) {
                Answer::Sent => continue,
                Answer::Failed(reply, e) => {
                    reply.error(e);
                    continue;
                }
                Answer::Empty(reply) => reply,
            };
            match st.is_eof() {
                Ok(true) => reply.data(&[]),
                Ok(false) => {
                    st.pending.push_front(PendingRead { reply, size, pid });
                    break;
                }
                Err(e) => reply.error(e),
            }
        }
        if st.poll.is_some() {
            match st.events() {
                Ok(ev) if ev.is_empty() => {}
                _ => {
                    if let Some(ph) = st.poll.take() {
                        let _ = ph.notify();
                    }
                }
            }
        }
        if st.pending.is_empty() && st.poll.is_none() {
            return done(&mut st);
        }
        if st.hup {
            return Look::Hup;
        }
        // Arm the wakeup, then look once more: a sub-buffer completed
        // between the look above and the arming would wake nobody.
        match st.prepare_wait() {
            Ok(false) => return Look::Wait,
            Ok(true) => continue,
            Err(_) => {
                for p in st.pending.drain(..) {
                    p.reply.error(Errno::EIO);
                }
                if let Some(ph) = st.poll.take() {
                    let _ = ph.notify();
                }
                return done(&mut st);
            }
        }
    }
}

fn run(inner: &Inner, kick_r: OwnedFd) {
    let mut buf = [0u8; 64];
    let mut timeout: Option<Duration> = None;
    loop {
        let handles: Vec<(u64, Arc<Handle>)> = lock(&inner.waiting)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        // Sleep on the kick pipe and every armed FIFO.
        {
            let mut fds = vec![PollFd::new(&kick_r, PollFlags::IN)];
            let mut owners = Vec::new();
            for (fh, h) in &handles {
                if let Some(w) = &h.wake {
                    if !lock(&h.state).hup {
                        fds.push(PollFd::new(w, PollFlags::IN));
                        owners.push(*fh);
                    }
                }
            }
            let ts = timeout.map(|t| Timespec {
                tv_sec: t.as_secs() as _,
                tv_nsec: t.subsec_nanos() as _,
            });
            if rustix::event::poll(&mut fds, ts.as_ref()).is_ok() {
                for (fd, fh) in fds[1..].iter().zip(&owners) {
                    if fd.revents().contains(PollFlags::HUP) {
                        if let Some((_, h)) = handles.iter().find(|(k, _)| k == fh) {
                            lock(&h.state).hup = true;
                        }
                    }
                }
            }
        }
        while rustix::io::read(kick_r.as_fd(), &mut buf).is_ok_and(|n| n > 0) {}
        // Look at every waiting buffer (it is cheap: a few loads each).
        let handles: Vec<(u64, Arc<Handle>)> = lock(&inner.waiting)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut any_hup = false;
        let mut any = false;
        for (fh, h) in handles {
            match look(inner, fh, &h) {
                Look::Done => {}
                Look::Wait => any = true,
                Look::Hup => {
                    any = true;
                    any_hup = true;
                }
            }
        }
        timeout = if any_hup {
            Some(HUP_INTERVAL)
        } else if any {
            Some(LOOK_INTERVAL)
        } else {
            None
        };
    }
}
