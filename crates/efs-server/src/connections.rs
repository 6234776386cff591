//! Bounds on connections that cost a slot but do no work: at most so many per client
//! address ([`PerAddress`]), and none idle for longer than `--idle-timeout` ([`Activity`]).
//!
//! The accept loop holds one of 10,000 connection slots per connection, and the
//! first-bytes deadline ([`crate::first_bytes`]) only covers a connection's start. Without
//! these, one client could open connections, send a request or an HTTP/2 preface on each,
//! answer pings and keep every slot: the server would then accept nobody.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which clients share a limit: one IPv4 address, or one IPv6 /64 (what a single host or
/// customer is usually given; it can pick any address in it); and, for IPv6, the /48 around
/// it (a site, which holds 65,536 /64s: one per address would let it take every slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddressKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
    V6Site([u8; 6]),
}

/// How many times the per-address limit one IPv6 /48 may hold in all.
pub const SITE_FACTOR: usize = 4;

/// The /48 of an IPv6 /64 key.
fn site_of(key: AddressKey) -> Option<AddressKey> {
    match key {
        AddressKey::V6Prefix(p) => {
            let mut s = [0u8; 6];
            s.copy_from_slice(&p[..6]);
            Some(AddressKey::V6Site(s))
        }
        _ => None,
    }
}

fn key_of(ip: IpAddr) -> AddressKey {
    match ip {
        IpAddr::V4(v4) => AddressKey::V4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => AddressKey::V4(v4.octets()),
            None => {
                let mut p = [0u8; 8];
                p.copy_from_slice(&v6.octets()[..8]);
                AddressKey::V6Prefix(p)
            }
        },
    }
}

/// Open connections per client address, up to a limit.
#[derive(Debug)]
pub struct PerAddress {
    max: usize,
    open: Mutex<HashMap<AddressKey, usize>>,
}

impl PerAddress {
    /// At most `max` connections per address; 0: no limit.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for a new connection from `ip`, given back when dropped; `None` if that
    /// address already has `max` open, or its IPv6 /48 `max` × [`SITE_FACTOR`].
    pub fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        if self.max == 0 {
            return Some(AddressSlot { owner: None });
        }
        let key = key_of(ip);
        let site = site_of(key);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.get(&key).is_some_and(|n| *n >= self.max)
            || site.is_some_and(|s| {
                open.get(&s)
                    .is_some_and(|n| *n >= self.max.saturating_mul(SITE_FACTOR))
            })
        {
            return None;
        }
        for k in std::iter::once(key).chain(site) {
            *open.entry(k).or_insert(0) += 1;
        }
        Some(AddressSlot {
            owner: Some((self.clone(), key)),
        })
    }

    /// Connections open from `ip`'s address (tests).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&key_of(ip)).copied().unwrap_or(0)
    }
}

/// One connection's place in its address's count.
#[derive(Debug)]
pub struct AddressSlot {
    owner: Option<(Arc<PerAddress>, AddressKey)>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((owner, key)) = self.owner.take() {
            let mut open = owner.open.lock().unwrap_or_else(|e| e.into_inner());
            for k in std::iter::once(key).chain(site_of(key)) {
                if let Some(n) = open.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        open.remove(&k);
                    }
                }
            }
        }
    }
}

/// What one connection is doing: how many requests are being handled, and when it last made
/// progress (a request began or was answered, a frame of an answer's body went out, or a
/// body ended).
///
/// A connection is idle while no handler runs and it has made no progress: either nothing is
/// happening, or an answer's body is stuck because the peer does not read it (an HTTP/2 peer
/// that keeps its window at zero, an HTTP/1 one that stops reading). Both are closed after
/// the idle timeout, the way nginx's `keepalive_timeout` and `send_timeout` do.
///
/// Over HTTP/2 one stream's progress would keep the connection from ever counting as idle
/// while its other answers stay stuck (each holding its buffers); so each large answer
/// also keeps its own clock, and one stuck for the idle timeout closes the connection too
/// ([`Activity::stalled_for`]), as nginx's `send_timeout` ends each request that stalls.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    handlers: AtomicUsize,
    /// Milliseconds after `start` of the last progress (0: the connection's start).
    last_ms: AtomicU64,
    /// The clocks (milliseconds after `start` of their last frame) of the large answers'
    /// bodies on their way out; a body dropped leaves a dead one, pruned at each look.
    bodies: Mutex<Vec<std::sync::Weak<AtomicU64>>>,
}

/// Answers whose body may be larger than this keep a clock of their own: a small answer
/// costs no bookkeeping (a small GET is the hottest path), and what stuck small answers hold
/// is bounded (256 streams × 64 KiB a connection).
const OWN_CLOCK_MIN: u64 = 64 << 10;

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// A connection that has just begun (it counts as active now).
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            handlers: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            bodies: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_ms.fetch_max(self.now_ms(), Ordering::SeqCst);
    }

    /// A new clock for a large answer's body, started now.
    fn body_clock(&self) -> Arc<AtomicU64> {
        let clock = Arc::new(AtomicU64::new(self.now_ms()));
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|b| b.strong_count() > 0);
        bodies.push(Arc::downgrade(&clock));
        clock
    }

    /// How long the most stuck of the large answers still being sent has sent nothing;
    /// `None` without any.
    pub fn stalled_for(&self) -> Option<Duration> {
        let now = self.now_ms();
        let mut bodies = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
        bodies.retain(|b| b.strong_count() > 0);
        bodies
            .iter()
            .filter_map(|b| b.upgrade())
            .map(|c| Duration::from_millis(now.saturating_sub(c.load(Ordering::SeqCst))))
            .max()
    }

    /// A request's handler begins; [`InFlight::answered`] when it has its answer (or the
    /// guard drops, if hyper drops the request).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.handlers.fetch_add(1, Ordering::SeqCst);
        self.touch();
        InFlight(self.clone())
    }

    /// How long the connection has made no progress with no handler running; `None` while
    /// a handler runs (a handler's own time limits bound it: the body timeout, the commit).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.handlers.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::SeqCst));
        Some(self.start.elapsed().saturating_sub(last))
    }
}

/// A request whose handler runs (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl InFlight {
    /// The handler has its answer: its body now counts progress as it goes out.
    pub fn answered(self) -> BodyProgress {
        BodyProgress(self.0.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.handlers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body on its way out: each frame sent, and its end, count as progress.
#[derive(Debug)]
pub struct BodyProgress(Arc<Activity>);

impl Drop for BodyProgress {
    fn drop(&mut self) {
        self.0.touch();
    }
}

/// How long an idle connection asked to close may take to do so before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// `body`, counting each frame it yields as its connection's progress: a download that is
/// being read keeps its connection busy; one the peer stopped reading does not.
/// `len`: the answer's length if its headers say it (a streamed body does not know it).
pub fn guarded(
    body: axum::body::Body,
    progress: BodyProgress,
    len: Option<u64>,
) -> axum::body::Body {
    use hyper::body::Body as _;
    let clock = len
        .or(body.size_hint().upper())
        .is_none_or(|n| n > OWN_CLOCK_MIN)
        .then(|| progress.0.body_clock());
    axum::body::Body::new(GuardedBody {
        inner: body,
        progress,
        clock,
    })
}

struct GuardedBody {
    inner: axum::body::Body,
    progress: BodyProgress,
    /// This answer's own clock (a large one: see [`Activity::stalled_for`]).
    clock: Option<Arc<AtomicU64>>,
}

impl hyper::body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &r {
            let a = &self.progress.0;
            let now = a.now_ms();
            a.last_ms.fetch_max(now, Ordering::SeqCst);
            if let Some(c) = &self.clock {
                c.store(now, Ordering::SeqCst);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// How often a connection looks at its idle time: a quarter of the timeout, between 250 ms
/// and 5 s (a connection is closed at most that late).
pub fn idle_check_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_counts_and_gives_back() {
        let pa = Arc::new(PerAddress::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = pa.try_take(a).unwrap();
        let _s2 = pa.try_take(a).unwrap();
        assert!(pa.try_take(a).is_none(), "a third from one address");
        let _t = pa.try_take(b).expect("another address has its own count");
        drop(s1);
        assert_eq!(pa.open_from(a), 1);
        let _s3 = pa.try_take(a).expect("a slot given back is free again");
        // An IPv4-mapped IPv6 address is the IPv4 address.
        assert!(pa.try_take("::ffff:192.0.2.1".parse().unwrap()).is_none());
    }

    #[test]
    fn ipv6_shares_a_limit_per_64() {
        let pa = Arc::new(PerAddress::new(1));
        let _s = pa.try_take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            pa.try_take("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        assert!(pa.try_take("2001:db8:1:3::1".parse().unwrap()).is_some());
    }

    /// Regression: each /64 had its own limit, so one /48 (65,536 /64s) could take every
    /// connection slot of the server. A /48 holds [`SITE_FACTOR`] times the limit in all.
    #[test]
    fn ipv6_sites_share_a_limit_per_48() {
        let pa = Arc::new(PerAddress::new(2));
        let in_site = |i: u16| -> IpAddr { format!("2001:db8:1:{i:x}::1").parse().unwrap() };
        let mut held: Vec<_> = (0..4)
            .flat_map(|i| [pa.try_take(in_site(i)), pa.try_take(in_site(i))])
            .map(|s| s.expect("within both limits"))
            .collect();
        assert_eq!(held.len(), 2 * SITE_FACTOR);
        assert!(pa.try_take(in_site(9)).is_none(), "a ninth from the /48");
        assert!(
            pa.try_take("2001:db8:2::1".parse().unwrap()).is_some(),
            "another /48 has its own count"
        );
        assert!(pa.try_take("192.0.2.1".parse().unwrap()).is_some());
        held.pop();
        let again = pa
            .try_take(in_site(9))
            .expect("a slot given back frees the /48's too");
        drop(held);
        drop(again);
        assert!(
            pa.open.lock().unwrap().is_empty(),
            "counts at zero are removed"
        );
    }

    #[test]
    fn no_limit_when_zero() {
        let pa = Arc::new(PerAddress::new(0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..1000).map(|_| pa.try_take(ip).unwrap()).collect();
        assert_eq!(slots.len(), 1000);
    }

    #[test]
    fn idle_only_without_a_handler_running() {
        let a = Arc::new(Activity::new());
        let r = a.begin();
        assert_eq!(a.idle_for(), None);
        let r2 = a.begin();
        drop(r);
        assert_eq!(a.idle_for(), None, "one still in flight");
        let body = r2.answered();
        assert!(
            a.idle_for().unwrap() < Duration::from_secs(1),
            "an answer's body counts by its progress, not as a running handler"
        );
        drop(body);
        assert!(a.idle_for().unwrap() < Duration::from_secs(1));
    }

    /// A body that yields frames keeps its connection from counting as idle; one that
    /// yields nothing (its peer does not read) lets the idle time grow.
    #[tokio::test]
    async fn body_frames_are_progress() {
        use http_body_util::BodyExt;
        let a = Arc::new(Activity::new());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, axum::Error>>(4);
        let stream = tokio_stream_from(rx);
        let mut body = guarded(
            axum::body::Body::from_stream(stream),
            a.begin().answered(),
            None,
        );
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let before = a.idle_for().unwrap();
        assert!(before >= Duration::from_millis(1950), "{before:?}");
        tx.send(Ok(bytes::Bytes::from_static(b"x"))).await.unwrap();
        body.frame().await.unwrap().unwrap();
        // (Bounds far apart: a busy machine may run this thread late.)
        let after = a.idle_for().unwrap();
        assert!(after < Duration::from_millis(1000), "{after:?}");
    }

    /// Regression: over HTTP/2 one answer going out kept the connection from counting as
    /// idle while its other answers were stuck (a peer reading one stream and holding the
    /// window of 255 others at zero kept their buffers for ever). Each large answer has
    /// its own clock: the stuck one's grows while the connection's idle time does not.
    /// Small answers (of a length their headers give, a streamed 4 KiB GET's included) keep
    /// none: they are the hot path.
    #[tokio::test]
    async fn a_stuck_answer_shows_beside_one_going_out() {
        use http_body_util::BodyExt;
        let a = Arc::new(Activity::new());
        let stream = |rx| axum::body::Body::from_stream(tokio_stream_from(rx));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, axum::Error>>(4);
        let mut moving = guarded(stream(rx), a.begin().answered(), Some(1 << 20));
        let (_stuck_tx, stuck_rx) = tokio::sync::mpsc::channel(4);
        let stuck = guarded(stream(stuck_rx), a.begin().answered(), None);
        let (_small_tx, small_rx) = tokio::sync::mpsc::channel(4);
        let small = guarded(stream(small_rx), a.begin().answered(), Some(4096));
        let fixed = guarded(axum::body::Body::from("small"), a.begin().answered(), None);
        assert_eq!(
            a.bodies.lock().unwrap().len(),
            2,
            "no clock for small answers"
        );
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(Ok(bytes::Bytes::from_static(b"x"))).await.unwrap();
            moving.frame().await.unwrap().unwrap();
        }
        // (Bounds far apart: a busy machine may run this thread late.)
        let (idle, stalled) = (a.idle_for().unwrap(), a.stalled_for().unwrap());
        assert!(stalled >= Duration::from_millis(1950), "{stalled:?}");
        assert!(idle < Duration::from_millis(1000), "{idle:?}");
        // Once the stuck one is gone, only the moving one counts.
        drop((stuck, small, fixed));
        let moving_for = a.stalled_for().unwrap();
        assert!(moving_for < Duration::from_millis(1000), "{moving_for:?}");
        drop(moving);
        assert_eq!(a.stalled_for(), None);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
