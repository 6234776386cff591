//! The PROXY protocol (HAProxy's, versions 1 and 2) from trusted proxies
//! (`--proxy-protocol-from`).
//!
//! TLS ends at efs-server, so a load balancer in front of it forwards TCP, and every client
//! then comes from the balancer's address: the per-address limits (connections, failed
//! logins, open challenges, unverified callers' audit entries) would treat all clients as one,
//! and the audit log would name the balancer. A balancer that speaks the PROXY protocol sends,
//! before the client's first byte, a header naming the client's address; EFS reads it from
//! the networks it is told to trust, and uses that address for everything the connection's
//! address is used for. A connection from a trusted network must begin with a header
//! (version 1 or 2, read whole within the handshake's 10 s; otherwise it is closed); a
//! connection from anywhere else is served as it is, and a header it sends is never read
//! (its TLS handshake fails). A `LOCAL` (version 2) or `UNKNOWN` (version 1) header, which
//! balancers send for their own health checks, names no client: the balancer's address is
//! kept.
//!
//! A connection from a trusted network is not counted against any address until its header
//! names one, so the header has a deadline of its own ([`HEADER_WAIT`], the spec's "a few
//! seconds"), and at most half of `--max-connections` may wait for theirs at once: a client
//! that opens connections through the balancer and sends nothing (AWS NLB, say, sends the
//! header only with the client's first bytes) cannot take every slot from direct clients.
//!
//! The header is parsed by the `ppp` crate; what is written here is only reading it off the
//! socket without taking a byte of the TLS handshake behind it (whatever came with it is
//! handed back first by [`Prefixed`]).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How long a connection from a trusted network has to send its whole header.
pub const HEADER_WAIT: Duration = Duration::from_secs(5);

/// The largest header read: a version 1 header is at most 107 bytes, a version 2 one 16 bytes
/// and its addresses (216 at most, for UNIX sockets) and TLVs, which balancers keep small.
pub const MAX_HEADER: usize = 4096;

/// How a version 1 header begins.
const V1_START: &[u8] = b"PROXY ";
/// The longest version 1 header, its CR LF included.
const V1_MAX: usize = 107;
/// How a version 2 header begins.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The networks whose connections carry a PROXY protocol header.
#[derive(Debug, Clone, Default)]
pub struct Trusted(Vec<IpNet>);

impl Trusted {
    /// The networks `nets` (none: the PROXY protocol is off).
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Whether a connection from `ip` must begin with a header. An IPv4 address mapped into
    /// IPv6 (a dual-stack listener) is taken as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether the PROXY protocol is on at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The networks, as given (for the start's audit entry and its lines).
    pub fn describe(&self) -> Vec<String> {
        self.0.iter().map(|n| n.to_string()).collect()
    }
}

/// `--proxy-protocol-from`: a network (`10.0.0.0/8`, `2001:db8::/32`) or one address. An
/// IPv4 network written as IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`) is refused: peers are
/// matched as the IPv4 addresses they are, so it would never match.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n.trunc(),
        Err(_) => s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!("'{s}' is not a network (10.0.0.0/8, 2001:db8::/32) or an address")
        })?,
    };
    if let IpNet::V6(n) = net
        && n.addr().to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "'{s}' is an IPv4-mapped IPv6 network: give it as IPv4 (10.0.0.0/8)"
        ));
    }
    Ok(net)
}

/// Why a connection from a trusted network was not served.
#[derive(Debug, PartialEq, Eq)]
pub enum NoHeader {
    /// It ended before sending a byte (a balancer's TCP health check): not a refusal.
    Closed,
    /// What it sent is not a whole header (or not in time): why.
    Refused(String),
}

impl std::fmt::Display for NoHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoHeader::Closed => f.write_str("the connection ended before sending anything"),
            NoHeader::Refused(why) => f.write_str(why),
        }
    }
}

/// Connections from trusted networks waiting for their header, at most `limit` at once.
#[derive(Debug)]
pub struct Pending {
    count: Arc<AtomicUsize>,
    limit: usize,
}

/// One connection's place among the [`Pending`] ones, given back when dropped.
#[derive(Debug)]
pub struct PendingSlot(Arc<AtomicUsize>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pending {
    /// At most half of `max_connections` (and at least one) waiting at once.
    pub fn new(max_connections: usize) -> Self {
        Self {
            count: Arc::new(AtomicUsize::new(0)),
            limit: (max_connections / 2).max(1),
        }
    }

    /// A place for one more connection waiting for its header, if there is one.
    pub fn try_take(&self) -> Option<PendingSlot> {
        let taken = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| PendingSlot(self.count.clone()))
    }
}

/// Reads the PROXY protocol header at the start of `io`, whose TCP peer is `peer` (the
/// proxy). Returns the client's address (`peer` for a LOCAL or UNKNOWN header) and the bytes
/// read past the header (the start of the TLS handshake), to be read first; or why the
/// connection is refused.
pub async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
    peer: SocketAddr,
) -> Result<(SocketAddr, Vec<u8>), NoHeader> {
    let (client, rest) = read_header_inner(io, peer).await.map_err(|why| match why {
        Some(why) => NoHeader::Refused(why),
        None => NoHeader::Closed,
    })?;
    // An IPv4 client named in an IPv6 header (a dual-stack balancer) is the IPv4 address.
    Ok((
        SocketAddr::new(client.ip().to_canonical(), client.port()),
        rest,
    ))
}

/// [`read_header`]; `Err(None)`: the connection ended before its first byte.
async fn read_header_inner<S: AsyncRead + Unpin>(
    io: &mut S,
    peer: SocketAddr,
) -> Result<(SocketAddr, Vec<u8>), Option<String>> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| Some(format!("reading the PROXY protocol header: {e}")))?;
        if n == 0 {
            if buf.is_empty() {
                return Err(None);
            }
            return Err(Some(
                "the connection ended before its PROXY protocol header".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let starts =
            |sig: &[u8]| buf[..buf.len().min(sig.len())] == sig[..buf.len().min(sig.len())];
        let v1 = starts(V1_START);
        if !v1 && !starts(V2_SIGNATURE) {
            return Err(Some(
                "not a PROXY protocol header (the connection began with something else: a client that reached EFS directly, not through the proxy?)".into(),
            ));
        }
        // (ppp takes a version 1 header cut between its CR and LF for a whole, wrong one.)
        if v1 && !buf.windows(2).any(|w| w == b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(Some(format!(
                    "not a PROXY protocol header (version 1: no end of line in its first {V1_MAX} bytes)"
                )));
            }
            continue;
        }
        // A version 2 header says its length in its 15th and 16th bytes.
        if !v1 && buf.len() >= 16 {
            let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            if len > MAX_HEADER {
                return Err(Some(format!(
                    "a PROXY protocol header of {len} bytes (at most {MAX_HEADER})"
                )));
            }
        }
        let parsed: HeaderResult = if v1 {
            // Whole (its end of line is there): any error is final.
            ppp::v1::Header::try_from(buf.as_slice()).into()
        } else {
            let r = ppp::v2::Header::try_from(buf.as_slice());
            if r.is_incomplete() {
                if buf.len() >= MAX_HEADER {
                    return Err(Some(format!(
                        "no complete PROXY protocol header in its first {MAX_HEADER} bytes"
                    )));
                }
                continue;
            }
            r.into()
        };
        let (client, len) = match parsed {
            HeaderResult::V1(Ok(h)) => (
                match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        SocketAddr::new(a.source_address.into(), a.source_port)
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        SocketAddr::new(a.source_address.into(), a.source_port)
                    }
                    ppp::v1::Addresses::Unknown => peer,
                },
                h.header.len(),
            ),
            HeaderResult::V2(Ok(h)) => (
                match (h.command, h.addresses) {
                    (ppp::v2::Command::Local, _) => peer,
                    (_, ppp::v2::Addresses::IPv4(a)) => {
                        SocketAddr::new(a.source_address.into(), a.source_port)
                    }
                    (_, ppp::v2::Addresses::IPv6(a)) => {
                        SocketAddr::new(a.source_address.into(), a.source_port)
                    }
                    // A UNIX socket or an unspecified family names no address of ours.
                    (_, ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified) => peer,
                },
                h.len(),
            ),
            HeaderResult::V1(Err(e)) => {
                return Err(Some(format!(
                    "not a PROXY protocol header (version 1: {e})"
                )));
            }
            HeaderResult::V2(Err(e)) => {
                return Err(Some(format!(
                    "not a PROXY protocol header (version 2: {e})"
                )));
            }
        };
        if len > MAX_HEADER {
            return Err(Some(format!(
                "a PROXY protocol header of {len} bytes (at most {MAX_HEADER})"
            )));
        }
        let rest = buf.split_off(len);
        return Ok((client, rest));
    }
}

/// A stream that yields `prefix` before what `inner` reads (the bytes read past a PROXY
/// protocol header); writes go to `inner`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn peer() -> SocketAddr {
        "10.0.0.9:40000".parse().unwrap()
    }

    /// What `read_header` returns for `sent` (written in pieces of `piece` bytes), and what
    /// the stream then reads.
    async fn read(sent: &[u8], piece: usize) -> (Result<SocketAddr, String>, Vec<u8>) {
        let (mut a, b) = tokio::io::duplex(64);
        let sent = sent.to_vec();
        let writer = tokio::spawn(async move {
            for c in sent.chunks(piece) {
                if a.write_all(c).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        let mut b = b;
        let r = read_header(&mut b, peer()).await;
        let mut after = Vec::new();
        if let Ok((_, rest)) = &r {
            let mut s = Prefixed::new(rest.clone(), b);
            writer.await.unwrap();
            s.read_to_end(&mut after).await.unwrap();
        }
        (r.map(|(c, _)| c).map_err(|e| e.to_string()), after)
    }

    #[tokio::test]
    async fn headers_give_the_client_and_leave_what_follows() {
        let tls = b"\x16\x03\x01\x00\x05hello";
        for piece in [1, 7, 1000] {
            let mut v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec();
            v1.extend_from_slice(tls);
            let (c, after) = read(&v1, piece).await;
            assert_eq!(c.unwrap(), "203.0.113.7:51000".parse().unwrap());
            assert_eq!(after, tls);

            // An IPv4 client in an IPv6 header (a dual-stack balancer) is the IPv4 address.
            let mapped = b"PROXY TCP6 ::ffff:203.0.113.3 ::ffff:10.0.0.1 51000 443\r\n";
            assert_eq!(
                read(mapped, piece).await.0.unwrap(),
                "203.0.113.3:51000".parse().unwrap()
            );
            let mut v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n".to_vec();
            v6.extend_from_slice(tls);
            assert_eq!(
                read(&v6, piece).await.0.unwrap(),
                "[2001:db8::7]:51000".parse().unwrap()
            );

            let mut v2 = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                (
                    "198.51.100.4:6000".parse::<SocketAddr>().unwrap(),
                    "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
                ),
            )
            .write_tlv(ppp::v2::Type::NoOp, b"pad")
            .unwrap()
            .build()
            .unwrap();
            v2.extend_from_slice(tls);
            let (c, after) = read(&v2, piece).await;
            assert_eq!(c.unwrap(), "198.51.100.4:6000".parse().unwrap());
            assert_eq!(after, tls);

            // A balancer's own health check names no client: the balancer's address.
            let mut unknown = b"PROXY UNKNOWN\r\n".to_vec();
            unknown.extend_from_slice(tls);
            let (c, after) = read(&unknown, piece).await;
            assert_eq!(c.unwrap(), peer());
            assert_eq!(after, tls);
            let mut local = ppp::v2::Builder::new(
                ppp::v2::Version::Two | ppp::v2::Command::Local,
                ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
            )
            .build()
            .unwrap();
            local.extend_from_slice(tls);
            assert_eq!(read(&local, piece).await.0.unwrap(), peer());
        }
    }

    #[tokio::test]
    async fn anything_but_a_whole_header_is_refused() {
        // A client that speaks TLS at once, a header that is not one, one cut short, and
        // one that never ends.
        let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".repeat(4);
        let e = read(&hello, 1000).await.0.unwrap_err();
        assert!(e.contains("began with something else"), "{e}");
        let e = read(&hello[..3], 1000).await.0.unwrap_err();
        assert!(e.contains("began with something else"), "{e}");
        let e = read(b"PROXY TCP4 nonsense\r\n", 1000).await.0.unwrap_err();
        assert!(e.contains("not a PROXY protocol header"), "{e}");
        let e = read(b"PROXY TCP4 203.0.113.7", 1000).await.0.unwrap_err();
        assert!(e.contains("ended before"), "{e}");
        let mut endless = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff".to_vec();
        endless.extend(std::iter::repeat_n(0u8, MAX_HEADER + 100));
        let e = read(&endless, 1000).await.0.unwrap_err();
        assert!(e.contains("bytes"), "{e}");
        // Nothing at all (a balancer's TCP health check) is not a refusal.
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert_eq!(
            read_header(&mut b, peer()).await.unwrap_err(),
            NoHeader::Closed
        );
        // A version 2 header claiming more than MAX_HEADER bytes is refused as soon as its
        // length is read, without waiting for them.
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut huge = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11".to_vec();
        huge.extend_from_slice(&u16::MAX.to_be_bytes());
        a.write_all(&huge).await.unwrap();
        let e = read_header(&mut b, peer()).await.unwrap_err().to_string();
        assert!(e.contains("65551 bytes"), "{e}");
        drop(a);
    }

    #[test]
    fn networks_and_addresses_are_trusted_as_given() {
        let t = Trusted::new(vec![
            parse_net("10.1.0.0/16").unwrap(),
            parse_net("192.0.2.5").unwrap(),
            parse_net("2001:db8::/32").unwrap(),
        ]);
        for ok in ["10.1.2.3", "192.0.2.5", "2001:db8::1", "::ffff:10.1.0.1"] {
            assert!(t.contains(ok.parse().unwrap()), "{ok}");
        }
        for no in ["10.2.0.1", "192.0.2.6", "2001:db9::1", "127.0.0.1"] {
            assert!(!t.contains(no.parse().unwrap()), "{no}");
        }
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("proxy.example").is_err());
        let mapped = parse_net("::ffff:10.0.0.0/104").unwrap_err();
        assert!(mapped.contains("give it as IPv4"), "{mapped}");
        assert_eq!(parse_net("10.1.2.3/16").unwrap().to_string(), "10.1.0.0/16");
        assert!(Trusted::default().is_empty());
    }

    #[test]
    fn at_most_half_the_connections_wait_for_a_header() {
        let p = Pending::new(5);
        let a = p.try_take().expect("one");
        let b = p.try_take().expect("two");
        assert!(p.try_take().is_none(), "a third of 5");
        drop(a);
        let c = p.try_take().expect("a place given back");
        assert!(p.try_take().is_none());
        drop((b, c));
        assert!(Pending::new(1).try_take().is_some(), "at least one");
    }
}
