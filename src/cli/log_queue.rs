//! Where `tailguard serve` writes its log lines: stderr, with the per-review
//! lines written off the request's path.
//!
//! Every review logs one info line (target [`DEFERRED_TARGET`]). Written
//! with a `write(2)` of its own on the request's path, that line cost more than
//! the rest of its logging, and a thread woken for every line costs more still.
//! So those lines are appended to a queue in memory (no system call) and a
//! writer thread of their own writes whatever has queued, once per
//! [`BATCH_DELAY`] at most, in one call. Every other line (start-up,
//! certificates, the namespace cache, warnings, errors, shutdown) is written at
//! once, as before, after whatever is queued: lines keep the order they were
//! logged in, and a line that says a state was reached is out before anyone
//! can observe that state.
//!
//! Nothing is dropped: with [`MAX_QUEUED`] bytes waiting, a review waits for
//! the writer (as it would for a slow stderr). Dropping [`Flush`] (at the end
//! of `tailguard serve`, on every exit path) writes out everything queued.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The target of the per-review line (`src/server/http.rs`); its info,
/// debug and trace lines are queued.
pub const DEFERRED_TARGET: &str = "tailguard::server::http";
/// How long a queued line may wait for others to join it.
pub const BATCH_DELAY: Duration = Duration::from_millis(5);
/// Queued bytes at which the writer starts at once.
const WAKE_AT: usize = 64 * 1024;
/// Queued bytes at which reviews wait for the writer.
pub const MAX_QUEUED: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct State {
    queued: Vec<u8>,
    /// The writer waits for a first line (a new line must wake it).
    idle: bool,
    /// Loggers waiting for room.
    blocked: usize,
    closed: bool,
}

struct Shared<W> {
    /// Held while writing, and taken before `state`: whoever writes takes
    /// the queue with it, so lines go out in the order they were logged.
    out: Mutex<W>,
    state: Mutex<State>,
    /// Wakes the writer.
    wake: Condvar,
    /// Wakes loggers waiting for room.
    room: Condvar,
    max_queued: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<W: Write> Shared<W> {
    fn push(&self, line: &[u8]) {
        let mut state = lock(&self.state);
        while state.queued.len() >= self.max_queued && !state.closed {
            // Start the writer now rather than at the end of its batch delay.
            self.wake.notify_one();
            state.blocked += 1;
            state = self.room.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.blocked -= 1;
        }
        if state.closed {
            drop(state);
            return self.write_now(line);
        }
        let before = state.queued.len();
        state.queued.extend_from_slice(line);
        if (before == 0 && state.idle) || (before < WAKE_AT && state.queued.len() >= WAKE_AT) {
            self.wake.notify_one();
        }
    }

    /// Writes what is queued, then `line`.
    fn write_now(&self, line: &[u8]) {
        let mut out = lock(&self.out);
        let queued = {
            let mut state = lock(&self.state);
            if state.blocked > 0 {
                self.room.notify_all();
            }
            std::mem::take(&mut state.queued)
        };
        // Write errors are ignored, as tracing-subscriber ignores them.
        let _ = out.write_all(&queued);
        let _ = out.write_all(line);
        let _ = out.flush();
    }

    /// The writer thread: waits for a first line, lets others join it for up
    /// to [`BATCH_DELAY`], writes them all; until closed and empty.
    fn drain(&self) {
        let mut batch = Vec::new();
        loop {
            let mut state = lock(&self.state);
            while state.queued.is_empty() && !state.closed {
                state.idle = true;
                state = self.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            state.idle = false;
            if state.queued.is_empty() {
                return; // closed, and everything written
            }
            let deadline = Instant::now() + BATCH_DELAY;
            while !state.closed && state.blocked == 0 && state.queued.len() < WAKE_AT {
                let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                    break;
                };
                state = self
                    .wake
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            drop(state);
            let mut out = lock(&self.out);
            {
                let mut state = lock(&self.state);
                std::mem::swap(&mut batch, &mut state.queued);
                if state.blocked > 0 {
                    self.room.notify_all();
                }
            }
            let _ = out.write_all(&batch);
            let _ = out.flush();
            drop(out);
            batch.clear();
            batch.shrink_to(2 * WAKE_AT);
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_one();
        self.room.notify_all();
    }
}

/// The `MakeWriter` for tracing-subscriber's fmt layer.
pub struct LogQueue<W> {
    shared: Arc<Shared<W>>,
}

/// Writes out everything queued and stops the writer thread when dropped.
#[must_use = "dropping it stops the writer; hold it until the process ends"]
pub struct Flush<W: Write> {
    shared: Arc<Shared<W>>,
    thread: Option<JoinHandle<()>>,
}

/// Log lines to stderr (see the module docs).
pub fn stderr() -> std::io::Result<(LogQueue<std::io::Stderr>, Flush<std::io::Stderr>)> {
    new(std::io::stderr(), MAX_QUEUED)
}

/// Log lines to `out`, with at most about `max_queued` bytes queued.
pub fn new<W: Write + Send + 'static>(out: W, max_queued: usize) -> std::io::Result<(LogQueue<W>, Flush<W>)> {
    let shared = Arc::new(Shared {
        out: Mutex::new(out),
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        room: Condvar::new(),
        max_queued,
    });
    let writer = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("tailguard-log".into())
        .spawn(move || writer.drain())?;
    Ok((
        LogQueue {
            shared: Arc::clone(&shared),
        },
        Flush {
            shared,
            thread: Some(thread),
        },
    ))
}

impl<W: Write> Drop for Flush<W> {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One line's writer: tracing-subscriber formats a whole line, then writes it
/// with one `write_all`.
pub struct Line<'a, W> {
    shared: &'a Shared<W>,
    deferred: bool,
}

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.deferred {
            self.shared.push(buf);
        } else {
            self.shared.write_now(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for LogQueue<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Line<'a, W> {
        Line {
            shared: &self.shared,
            deferred: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a, W> {
        Line {
            shared: &self.shared,
            deferred: meta.target() == DEFERRED_TARGET
                && matches!(*meta.level(), Level::INFO | Level::DEBUG | Level::TRACE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer into a shared buffer that counts its write calls.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut inner = lock(&self.0);
            inner.0.extend_from_slice(buf);
            inner.1 += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8_lossy(&lock(&self.0).0).into_owned()
        }

        fn writes(&self) -> usize {
            lock(&self.0).1
        }
    }

    fn line<'a, W: Write>(queue: &'a LogQueue<W>, deferred: bool) -> Line<'a, W> {
        Line {
            shared: &queue.shared,
            deferred,
        }
    }

    #[test]
    fn keeps_the_order_and_flushes_on_drop() {
        let sink = Sink::default();
        let (queue, flush) = new(sink.clone(), MAX_QUEUED).expect("writer thread");
        line(&queue, true).write_all(b"review 1\n").expect("write");
        line(&queue, true).write_all(b"review 2\n").expect("write");
        // Written at once, after the queued lines.
        line(&queue, false).write_all(b"listening\n").expect("write");
        assert_eq!(sink.text(), "review 1\nreview 2\nlistening\n");
        line(&queue, true).write_all(b"review 3\n").expect("write");
        drop(flush);
        assert_eq!(sink.text(), "review 1\nreview 2\nlistening\nreview 3\n");
        // After the writer stopped, lines are written directly.
        line(&queue, true).write_all(b"late\n").expect("write");
        assert!(sink.text().ends_with("review 3\nlate\n"));
    }

    #[test]
    fn batches_lines_and_loses_none_when_full() {
        let sink = Sink::default();
        // Room for about ten lines: loggers wait for the writer.
        let (queue, flush) = new(sink.clone(), 100).expect("writer thread");
        let queue = Arc::new(queue);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || {
                    for i in 0..500 {
                        line(&queue, true)
                            .write_all(format!("t{t} line {i:04}\n").as_bytes())
                            .expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("logger thread");
        }
        drop(flush);
        let text = sink.text();
        assert_eq!(text.lines().count(), 2000);
        for t in 0..4 {
            let mine: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("t{t} "))).collect();
            let expected: Vec<String> = (0..500).map(|i| format!("t{t} line {i:04}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines, in order");
        }
        assert!(sink.writes() < 2000, "{} writes for 2000 lines", sink.writes());
    }

    #[test]
    fn queues_only_the_review_lines() {
        // No writer thread: what is queued stays queued.
        let sink = Sink::default();
        let queue = LogQueue {
            shared: Arc::new(Shared {
                out: Mutex::new(sink.clone()),
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                room: Condvar::new(),
                max_queued: MAX_QUEUED,
            }),
        };
        let shared = Arc::clone(&queue.shared);
        let subscriber = tracing_subscriber::fmt().with_writer(queue).json().finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "tailguard::server::http", uid = "u-1", "review");
            assert_eq!(sink.text(), "");
            assert!(String::from_utf8_lossy(&lock(&shared.state).queued).contains("\"uid\":\"u-1\""));
            tracing::info!(target: "tailguard::server", "listening");
            let text = sink.text();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert!(
                lines[0].contains("\"review\"") && lines[1].contains("\"listening\""),
                "{text}"
            );
            tracing::warn!(target: "tailguard::server::http", "body too large");
            assert_eq!(sink.text().lines().count(), 3);
        });
    }
}
