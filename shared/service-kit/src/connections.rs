//! A listener that bounds how many connections a server holds open, and closes the ones that stay
//! silent. Each open HTTP/1 connection costs its task and buffers (about 50 KiB measured in the
//! API); a client that opens a connection per request whenever the others are busy (an open-loop
//! load generator on a saturated machine opened over 5,000) would otherwise grow the server's
//! memory without bound. Beyond the limit, new connections wait in the kernel's accept queue until
//! one closes, as nginx's `worker_connections` or actix's `max_connections` do; connections idle
//! for longer than the idle timeout are closed, so idle keep-alive connections cannot hold every
//! slot.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A [`TcpListener`] that accepts at most `max` connections at a time.
#[derive(Debug)]
pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle_timeout: Duration,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max: usize, idle_timeout: Duration) -> Self {
        Self { inner, slots: Arc::new(Semaphore::new(max)), idle_timeout }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedConnection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = Arc::clone(&self.slots).acquire_owned().await.expect("the listener never closes its semaphore");
        // axum's own accept for a TcpListener: retries after errors such as too many open files.
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let idle = Box::pin(tokio::time::sleep(self.idle_timeout));
        (LimitedConnection { stream, _slot: slot, idle, idle_timeout: self.idle_timeout }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection holding its slot until it is dropped; reading or writing fails with
/// `TimedOut` once nothing moved on it for the idle timeout.
#[derive(Debug)]
pub struct LimitedConnection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
}

impl LimitedConnection {
    /// What a read or a write of the stream gave, through the idle clock: a result starts the clock
    /// again; while the stream waits, `TimedOut` once the clock ran out.
    fn idle_checked<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(result) => {
                self.idle.as_mut().reset(Instant::now() + self.idle_timeout);
                Poll::Ready(result)
            }
            Poll::Pending => self
                .idle
                .as_mut()
                .poll(cx)
                .map(|()| Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long"))),
        }
    }
}

impl AsyncRead for LimitedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.idle_checked(cx, polled)
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.idle_checked(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.idle_checked(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn listener(max: usize, idle: Duration) -> (LimitedListener, std::net::SocketAddr) {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = inner.local_addr().expect("bound");
        (LimitedListener::new(inner, max, idle), addr)
    }

    /// The second connection is accepted only once the first is dropped.
    #[tokio::test]
    async fn a_connection_beyond_the_limit_waits_for_a_slot() {
        let (mut listener, addr) = listener(1, Duration::from_secs(60)).await;
        let _first_client = TcpStream::connect(addr).await.expect("connects");
        let (first, _) = axum::serve::Listener::accept(&mut listener).await;
        let _second_client = TcpStream::connect(addr).await.expect("the kernel queues it");
        let waiting = tokio::time::timeout(Duration::from_millis(200), axum::serve::Listener::accept(&mut listener));
        assert!(waiting.await.is_err(), "no slot while the first connection is open");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), axum::serve::Listener::accept(&mut listener));
        assert!(second.await.is_ok(), "accepted once the first closed");
    }

    /// A connection silent for the idle timeout fails its read; one that moves bytes does not.
    #[tokio::test]
    async fn a_silent_connection_times_out_and_a_busy_one_does_not() {
        let (mut listener, addr) = listener(4, Duration::from_millis(300)).await;
        let mut client = TcpStream::connect(addr).await.expect("connects");
        let (mut server, _) = axum::serve::Listener::accept(&mut listener).await;
        let mut byte = [0_u8; 1];
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            client.write_all(b"x").await.expect("writes");
            server.read_exact(&mut byte).await.expect("bytes keep it alive");
        }
        let error = server.read(&mut byte).await.expect_err("silent for longer than the timeout");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
