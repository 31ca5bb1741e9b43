//! The read and write deadlines of one connection.
//!
//! hyper's own `header_read_timeout` starts when it waits for a request head, which on a
//! keep-alive connection is right after the previous response: it would close every idle
//! keep-alive connection after the header timeout (hyperium/hyper#3828; hyper has no separate
//! idle timeout). The phases are kept apart here instead, as nginx (`client_header_timeout`,
//! `keepalive_timeout`) and Go (`ReadHeaderTimeout`, `IdleTimeout`) do:
//!
//! - a new connection must complete its first request head within the header timeout;
//! - after a response, the next request must start within the idle timeout, and its head must
//!   be complete within the header timeout of its first byte;
//! - while a request is answered nothing is timed here (the router's request timeout is);
//! - a response the client does not read for the idle timeout is abandoned.
//!
//! [`TimedIo`] wraps the socket and fails a read or write with `TimedOut` when its deadline
//! passes; hyper then drops the connection. The service marks the request cycle through
//! [`Deadlines::busy`] and [`Deadlines::idle`].

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head, which must be complete by `by`; `started` once a byte of it
    /// arrived (before that, `by` is the idle deadline).
    Head { by: Instant, started: bool },
    /// A request is being answered.
    Busy,
}

/// Where one connection is in its request cycle, and so which deadline applies.
#[derive(Debug)]
pub struct Deadlines {
    header: Duration,
    idle: Duration,
    phase: Mutex<Phase>,
    /// The task that last found nothing to read: woken when the idle deadline starts, since
    /// hyper does not read again by itself after a response (so the timer gets armed).
    reader: Mutex<Option<Waker>>,
    /// A request head was complete at least once.
    answered: AtomicBool,
}

impl Deadlines {
    /// A new connection: its first request head is due within `header`.
    pub fn new(header: Duration, idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            header,
            idle,
            phase: Mutex::new(Phase::Head {
                by: Instant::now() + header,
                started: true,
            }),
            reader: Mutex::new(None),
            answered: AtomicBool::new(false),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Phase) -> R) -> R {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut phase)
    }

    /// A request head is complete: it is being answered.
    pub fn busy(&self) {
        self.answered.store(true, Ordering::SeqCst);
        self.with(|p| *p = Phase::Busy);
    }

    /// Whether a request of this connection was (or is being) answered.
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::SeqCst)
    }

    /// The response is sent (or abandoned): the next request must start within the idle timeout.
    pub fn idle(&self) {
        let by = Instant::now() + self.idle;
        self.with(|p| *p = Phase::Head { by, started: false });
        let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(waker) = reader {
            waker.wake();
        }
    }

    fn waiting_to_read(&self, waker: &Waker) {
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        if !reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *reader = Some(waker.clone());
        }
    }

    /// Bytes arrived: the first of a new request starts its header deadline.
    fn read_some(&self) {
        self.with(|p| {
            if let Phase::Head { started, by } = p
                && !*started
            {
                *started = true;
                *by = Instant::now() + self.header;
            }
        });
    }

    /// The read deadline now, and which timeout it is.
    fn read_deadline(&self) -> Option<(Instant, &'static str)> {
        self.with(|p| match *p {
            Phase::Head { by, started: true } => Some((by, "header")),
            Phase::Head { by, started: false } => Some((by, "idle")),
            Phase::Busy => None,
        })
    }
}

/// A socket whose reads and writes fail with `TimedOut` once the connection's deadline passes.
pub struct TimedIo<T> {
    inner: T,
    deadlines: Arc<Deadlines>,
    read_timer: Pin<Box<Sleep>>,
    /// Armed while a write waits for the client to read.
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<T> TimedIo<T> {
    pub fn new(inner: T, deadlines: Arc<Deadlines>) -> Self {
        Self {
            inner,
            deadlines,
            read_timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            write_timer: None,
        }
    }

    /// A write could not proceed: whether the client has left it waiting for too long.
    fn write_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let stall = self.deadlines.idle;
        let timer = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            crate::metrics::http_connection_dropped("write_timeout");
            tracing::debug!("closing a connection whose client does not read its response");
            return true;
        }
        false
    }

    fn written<R>(&mut self, r: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending if self.write_expired(cx) => Poll::Ready(Err(timed_out("write"))),
            Poll::Pending => Poll::Pending,
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timeout"))
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.deadlines.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.deadlines.waiting_to_read(cx.waker());
                if let Some((by, what)) = this.deadlines.read_deadline() {
                    if this.read_timer.deadline() != by {
                        this.read_timer.as_mut().reset(by);
                    }
                    if this.read_timer.as_mut().poll(cx).is_ready() {
                        crate::metrics::http_connection_dropped(if what == "header" {
                            "header_timeout"
                        } else {
                            "idle_timeout"
                        });
                        tracing::debug!(
                            timeout = what,
                            "closing a connection that sent no request in time"
                        );
                        return Poll::Ready(Err(timed_out(what)));
                    }
                }
                Poll::Pending
            }
            err => err,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.written(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.written(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.written(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.written(r, cx)
    }
}
