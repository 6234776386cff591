//! A deadline on a new connection's first bytes.
//!
//! hyper's HTTP/1 header read timeout only starts once the connection is known to speak
//! HTTP/1, and the automatic HTTP/1-or-2 detection waits for the first bytes without any
//! limit: a client that completes the TLS handshake and then sends nothing would hold its
//! connection (and one of the accept loop's slots) forever, and a few thousand such
//! clients would stop the server from accepting anyone. [`FirstBytesDeadline`] makes reads
//! fail with `TimedOut` unless the peer has sent its first bytes in time; after that, the
//! protocol's own timeouts take over (HTTP/1 header read timeout, HTTP/2 keep-alive pings),
//! and the idle timeout of [`crate::connections`] closes a connection that stays quiet.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Enough for the HTTP/2 preface (24 bytes) or an HTTP/1 request line's start: what the
/// protocol detection needs before a protocol's own timeouts apply.
const FIRST_BYTES: usize = 24;

/// An I/O stream whose reads time out until the peer has sent its first 24 bytes (enough
/// for the protocol detection).
pub struct FirstBytesDeadline<S> {
    inner: S,
    /// `None` once the first bytes have arrived.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    missing: usize,
}

impl<S> FirstBytesDeadline<S> {
    /// Wraps `inner`: the first bytes must arrive within `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            missing: FIRST_BYTES,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            match &res {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len() - before;
                    this.missing = this.missing.saturating_sub(n);
                    if this.missing == 0 {
                        this.deadline = None;
                    }
                }
                Poll::Ready(Err(_)) => {}
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client sent no request in time",
                        )));
                    }
                }
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (client, server) = tokio::io::duplex(1024);
        let mut s = FirstBytesDeadline::new(server, Duration::from_millis(50));
        let mut buf = [0u8; 64];
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(1024);
        let mut s = FirstBytesDeadline::new(server, Duration::from_millis(50));
        client.write_all(&[b'x'; FIRST_BYTES]).await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), FIRST_BYTES);
        // Past the deadline, a quiet but established connection is not cut by this layer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b"more").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 4);
    }
}
