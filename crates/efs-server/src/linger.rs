//! A lingering close for the connections still open when the shutdown timeout ends.
//!
//! An upload still receiving its body then is answered 503 (`app::write`), but the client is
//! still sending: a socket closed with unread bytes in its receive queue sends a TCP reset,
//! which can reach the client before it has read the answer (it then sees "connection
//! reset", not the 503), and a client writing its body fails on the reset without reading at
//! all. So the connection is handed back when hyper lets go of it ([`HandBack`]), closed
//! for writing (TLS close_notify, then FIN) and read until the client closes too, for at
//! most [`LINGER`] ([`linger`]), as web servers do for an answer sent before the request's
//! end.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How long a connection cut at the shutdown is read (and what arrives discarded) after
/// its answer, for the client to read the answer and close.
pub const LINGER: Duration = Duration::from_secs(2);

/// An I/O stream that, when dropped (by hyper, once the connection has ended), sends itself
/// back on a channel instead of closing.
pub struct HandBack<S> {
    inner: Option<S>,
    back: Option<tokio::sync::oneshot::Sender<S>>,
}

impl<S> HandBack<S> {
    /// Wraps `inner`; the stream comes back on `back` when this is dropped.
    pub fn new(inner: S, back: tokio::sync::oneshot::Sender<S>) -> Self {
        Self {
            inner: Some(inner),
            back: Some(back),
        }
    }

    fn inner(&mut self) -> &mut S {
        self.inner
            .as_mut()
            .expect("the stream is taken only when dropped")
    }
}

impl<S> Drop for HandBack<S> {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take()) {
            // Nobody waiting for it: it closes here, as without this wrapper.
            let _ = back.send(inner);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HandBack<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HandBack<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().inner()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().inner()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().inner()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

/// Closes `io` for writing, then reads and discards until the peer closes, an error, or
/// `within` has passed; then drops it.
pub async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, within: Duration) {
    let _ = tokio::time::timeout(within, async {
        let _ = io.shutdown().await;
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stream_comes_back_when_dropped_and_lingers_until_the_peer_closes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut wrapped = HandBack::new(server, tx);
        wrapped.write_all(b"503").await.unwrap();
        drop(wrapped);
        let server = rx.await.expect("handed back");
        // The client still sending when the answer went out: read, not refused.
        client.write_all(b"more of the body").await.unwrap();
        let lingering = tokio::spawn(linger(server, Duration::from_secs(30)));
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"503", "the answer, then the end");
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), lingering)
            .await
            .expect("ends once the peer closes")
            .unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_never_closes_is_dropped_after_the_time_given() {
        let (_client, server) = tokio::io::duplex(1024);
        tokio::time::timeout(
            Duration::from_secs(5),
            linger(server, Duration::from_millis(50)),
        )
        .await
        .expect("bounded");
    }
}
