//! How many audit entries refusals of callers that proved nobody may write.
//!
//! Every file request and every login event is recorded, refused ones too. A request that
//! proved nobody (no token, a forged, malformed or expired one, a path refused before the
//! token was looked at, a login whose signature did not check out or that was answered
//! 429) costs its sender nothing but a TLS connection, and each one used to write an entry:
//! a flood of them filled the disk at the audit log's speed, and a full disk fails the log,
//! which then refuses every request (fail closed). So such entries are written one by one
//! only within a budget: [`AuditBudget::per_address`] per client address (IPv6: per /64)
//! and [`AuditBudget::total`] over all addresses, per window ([`SUMMARY_INTERVAL`]). What
//! goes over it is counted, and at the end of the window one `unrecorded` entry per address
//! says how many entries were not written (the [`MAX_SUMMARIES`] busiest addresses by name,
//! the rest together under `other addresses`), so the log still shows that, when and from
//! where it happened. The client's answer does not change.
//!
//! Every request of a caller whose token checked out (its refusals included, and a valid
//! token presented without its bound client certificate), and every login whose signature
//! checked out, is recorded one by one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use efs_core::DataDir;
use efs_core::audit::{Action, Record};

use crate::ratelimit::address_key;

/// How often the counts of unrecorded entries are written and the budget starts over.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// At most this many addresses get an `unrecorded` entry of their own per window; the
/// others are summed up in one entry.
pub const MAX_SUMMARIES: usize = 64;
/// The longest path (in bytes) an entry of a caller that proved nobody keeps; a longer one is
/// cut at a character boundary and ends with `…`.
pub const MAX_UNVERIFIED_PATH: usize = 512;

/// The client field of the entry that sums up the addresses not named one by one.
pub const OTHER_ADDRESSES: &str = "other addresses";

#[derive(Default)]
struct Window {
    /// Entries written in this window, over all addresses.
    written: u32,
    /// Per address key: entries written, entries not written.
    by_address: HashMap<IpAddr, (u32, u64)>,
    /// Entries not written for addresses the table had no room for.
    untracked: u64,
}

/// The budget of entries of callers that proved nobody (see the module's documentation).
pub struct AuditBudget {
    per_address: u32,
    total: u32,
    max_addresses: usize,
    window: Mutex<Window>,
}

impl Default for AuditBudget {
    /// 30 entries per address and 600 in all per window, 10,000 addresses tracked.
    fn default() -> Self {
        Self::new(30, 600, 10_000)
    }
}

impl AuditBudget {
    /// A budget of `per_address` entries per address and `total` in all per window,
    /// tracking at most `max_addresses` addresses.
    pub fn new(per_address: u32, total: u32, max_addresses: usize) -> Self {
        Self {
            per_address,
            total,
            max_addresses,
            window: Mutex::new(Window::default()),
        }
    }

    /// Entries per address per window.
    pub fn per_address(&self) -> u32 {
        self.per_address
    }

    /// Entries over all addresses per window.
    pub fn total(&self) -> u32 {
        self.total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Every mutation leaves `Window` consistent before anything can panic.
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an entry of a refusal of a caller that proved nobody, from `client`, may be
    /// written now; if not, it is counted for the window's `unrecorded` entry.
    pub fn admit(&self, client: IpAddr) -> bool {
        let key = address_key(client);
        let mut w = self.lock();
        let w = &mut *w;
        let room = w.by_address.len() < self.max_addresses;
        let counts = match w.by_address.get_mut(&key) {
            Some(c) => Some(c),
            None if room => Some(w.by_address.entry(key).or_default()),
            None => None,
        };
        match counts {
            Some(c) if c.0 < self.per_address && w.written < self.total => {
                c.0 += 1;
                w.written += 1;
                true
            }
            Some(c) => {
                c.1 += 1;
                false
            }
            None => {
                w.untracked += 1;
                false
            }
        }
    }

    /// Ends the window: the `unrecorded` entries to write (none when everything was
    /// written), busiest address first, and a fresh budget.
    pub fn take_summaries(&self) -> Vec<Record> {
        let w = std::mem::take(&mut *self.lock());
        let mut over: Vec<(IpAddr, u64)> = w
            .by_address
            .into_iter()
            .filter(|(_, (_, unwritten))| *unwritten > 0)
            .map(|(ip, (_, unwritten))| (ip, unwritten))
            .collect();
        over.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let rest: u64 = w.untracked + over.iter().skip(MAX_SUMMARIES).map(|o| o.1).sum::<u64>();
        over.truncate(MAX_SUMMARIES);
        let mut out: Vec<Record> = over
            .into_iter()
            .map(|(ip, n)| summary(ip.to_string(), n))
            .collect();
        if rest > 0 {
            out.push(summary(OTHER_ADDRESSES.to_owned(), rest));
        }
        out
    }

    /// Writes the window's `unrecorded` entries and starts a fresh budget. A count the log
    /// refuses (it has failed or closed) goes to the server's log instead, without the
    /// address (addresses are kept only inside the encrypted audit log).
    pub fn write_summaries(&self, data: &DataDir) {
        for rec in self.take_summaries() {
            let detail = rec.detail.clone();
            if data.audit().submit(rec).is_err() {
                tracing::warn!(
                    detail = detail.as_deref().unwrap_or("-"),
                    "the audit log refused an `unrecorded` entry"
                );
            }
        }
    }
}

fn summary(client: String, n: u64) -> Record {
    let mut rec = Record::new(Action::Unrecorded, 0);
    rec.client = Some(client);
    rec.detail = Some(format!(
        "{n} entries of refusals of callers that proved nobody not written one by one"
    ));
    rec
}

/// `path` cut to [`MAX_UNVERIFIED_PATH`] bytes at a character boundary, with `…` at the
/// end when it was cut.
pub fn cut_path(path: String) -> String {
    if path.len() <= MAX_UNVERIFIED_PATH {
        return path;
    }
    let mut end = MAX_UNVERIFIED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = path[..end].to_owned();
    cut.push('…');
    cut
}

/// Writes the budget's `unrecorded` entries every [`SUMMARY_INTERVAL`]. Runs until the
/// server aborts it at shutdown, then writes the last window's itself.
pub async fn write_summaries_periodically(budget: Arc<AuditBudget>, data: Arc<DataDir>) {
    let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // At most MAX_SUMMARIES + 1 appends of a few hundred bytes (as every request does
        // one): written here, so that aborting the task never stops it midway.
        budget.write_summaries(&data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn counts(recs: &[Record]) -> Vec<(String, String)> {
        recs.iter()
            .map(|r| {
                assert_eq!(r.action, Action::Unrecorded);
                (r.client.clone().unwrap(), r.detail.clone().unwrap())
            })
            .collect()
    }

    fn detail(n: u64) -> String {
        format!("{n} entries of refusals of callers that proved nobody not written one by one")
    }

    #[test]
    fn each_address_has_its_own_budget_and_the_rest_is_counted() {
        let b = AuditBudget::new(3, 100, 100);
        let admitted = (0..10).filter(|_| b.admit(ip("10.0.0.1"))).count();
        assert_eq!(admitted, 3);
        // Another address is not held back by the first one's flood.
        assert!(b.admit(ip("10.0.0.2")));
        assert_eq!(
            counts(&b.take_summaries()),
            [("10.0.0.1".into(), detail(7))]
        );
        // A fresh window: a fresh budget, and nothing left to sum up.
        assert!(b.admit(ip("10.0.0.1")));
        assert!(b.take_summaries().is_empty());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let b = AuditBudget::new(2, 100, 100);
        assert!(b.admit(ip("2001:db8::1")));
        assert!(b.admit(ip("2001:db8::2")));
        assert!(!b.admit(ip("2001:db8::ffff:1")));
        assert!(b.admit(ip("2001:db8:0:1::1")), "another /64");
        assert_eq!(
            counts(&b.take_summaries()),
            [("2001:db8::".into(), detail(1))]
        );
    }

    #[test]
    fn the_total_bounds_many_addresses() {
        let b = AuditBudget::new(5, 8, 1000);
        let admitted = (0..100u8)
            .filter(|i| b.admit(IpAddr::from([10, 0, 0, *i])))
            .count();
        assert_eq!(admitted, 8);
        // 92 addresses over the total: the busiest MAX_SUMMARIES by name, the rest together.
        let recs = counts(&b.take_summaries());
        assert_eq!(recs.len(), MAX_SUMMARIES + 1);
        assert_eq!(
            recs.last().unwrap(),
            &(
                OTHER_ADDRESSES.to_owned(),
                detail(92 - MAX_SUMMARIES as u64)
            )
        );
    }

    #[test]
    fn addresses_beyond_the_table_are_counted_together() {
        let b = AuditBudget::new(1, 100, 2);
        assert!(b.admit(ip("10.0.0.1")));
        assert!(b.admit(ip("10.0.0.2")));
        assert!(!b.admit(ip("10.0.0.3")), "the table is full");
        assert!(!b.admit(ip("10.0.0.1")));
        let recs = counts(&b.take_summaries());
        assert_eq!(
            recs,
            [
                ("10.0.0.1".into(), detail(1)),
                (OTHER_ADDRESSES.into(), detail(1))
            ]
        );
    }

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        assert_eq!(cut_path("/a/b".into()), "/a/b");
        let exact = "x".repeat(MAX_UNVERIFIED_PATH);
        assert_eq!(cut_path(exact.clone()), exact);
        // 511 ASCII bytes, then a 3-byte character across the limit.
        let long = format!("{}€€€", "y".repeat(MAX_UNVERIFIED_PATH - 1));
        let cut = cut_path(long);
        assert_eq!(cut, format!("{}…", "y".repeat(MAX_UNVERIFIED_PATH - 1)));
    }
}
