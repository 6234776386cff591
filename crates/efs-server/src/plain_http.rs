//! A plain HTTP request sent to the HTTPS port (`curl http://HOST:PORT/…`, a browser told
//! `http://`) is answered in plain HTTP: `400`, with a JSON error saying that the port
//! speaks HTTPS, as nginx answers one on its TLS port. Without it the TLS handshake failed on
//! the request's first bytes and the client printed something of its own (curl: "Received
//! HTTP/0.9 when not allowed"), which told a newcomer nothing.
//!
//! Told apart by the first byte: every TLS connection begins with a handshake record (type
//! 22, `0x16`), every HTTP/1 request line with a method in capital letters (and the HTTP/2
//! prior-knowledge preface with `PRI`).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of the request read before answering (its line and headers; a body is not
/// waited for).
const MAX_REQUEST: usize = 8 * 1024;

/// How long the request's headers may take to arrive, and the answer to be sent, each.
const WAIT: Duration = Duration::from_secs(2);

/// The answer: a fixed text, so that nothing of the request is ever echoed.
const ANSWER: &str = "{\"error\":\"bad_request\",\"message\":\"this port speaks HTTPS only: send the request to https:// (a plain HTTP request was sent to it)\"}";

/// Whether a connection whose first byte is `first` is plain HTTP rather than TLS.
pub fn is_plain_http(first: u8) -> bool {
    first.is_ascii_uppercase()
}

/// Whether the connection, whose bytes already read are `read` (after a PROXY protocol
/// header), begins with plain HTTP. Waits for a first byte when none was read (the caller's
/// handshake deadline bounds the wait); a connection closed before one is not.
pub async fn begins_with_plain_http(tcp: &TcpStream, read: &[u8]) -> bool {
    if let Some(&b) = read.first() {
        return is_plain_http(b);
    }
    let mut first = [0u8; 1];
    matches!(tcp.peek(&mut first).await, Ok(1) if is_plain_http(first[0]))
}

/// Answers a plain HTTP request with `400` and closes: the request's headers are read first
/// (at most 8 KiB, 2 s), so that the client is reading when the answer comes, and whatever
/// it sends after the answer is read and dropped until it closes (at most 2 s): closing with unread bytes would reset the connection, and the client
/// could lose the answer.
pub async fn answer(mut tcp: TcpStream, read: &[u8]) {
    let mut seen = read.to_vec();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(WAIT, async {
        while seen.len() < MAX_REQUEST && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        ANSWER.len()
    );
    let sent = tokio::time::timeout(WAIT, async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(ANSWER.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(WAIT, async {
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::is_plain_http;

    #[test]
    fn tls_and_http_are_told_apart_by_their_first_byte() {
        // A TLS handshake record, an SSLv2-style hello, HTTP/1 methods, the HTTP/2 preface.
        assert!(!is_plain_http(0x16));
        assert!(!is_plain_http(0x80));
        for m in [
            "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "PRI",
        ] {
            assert!(is_plain_http(m.as_bytes()[0]), "{m}");
        }
        assert!(!is_plain_http(b'g'));
        assert!(!is_plain_http(0));
    }
}
