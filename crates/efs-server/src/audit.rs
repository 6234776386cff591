//! What the server writes to the audit log (`efs_core::audit`): one entry per login event
//! (through the [`AuthAudit`] hook) and per file request, written before the answer leaves.
//! A request whose entry cannot be written is answered 503 `audit_unavailable`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::Response;
use efs_core::DataDir;
use efs_core::audit::{Action, AuditMark, RECOVER_FIRST, RECOVER_MAX, Record};

use crate::audit_budget::{AuditBudget, cut_path};
use crate::auth::{AuthAudit, AuthEvent, AuthEventKind};
use crate::error::ApiError;

/// Sends the authenticator's events to the data dir's audit log. `record` cannot return an
/// error (it runs inside the login code): it writes the entry and drops the result, and the
/// route checks [`efs_core::audit::AuditLog::sync_point`] before answering, so no answer
/// leaves whose entry could not be written. Refusals of callers that proved nobody
/// ([`AuthEvent::proven`] false: a failed login, a refused token or refresh) are written
/// within the [`AuditBudget`].
pub struct AuditHook {
    /// The data dir whose log gets the entries.
    pub data: Arc<DataDir>,
    /// The budget of entries without a verified identity (shared with the file routes).
    pub budget: Arc<AuditBudget>,
}

impl AuthAudit for AuditHook {
    fn record(&self, e: &AuthEvent<'_>) {
        let action = match e.kind {
            AuthEventKind::LoginSucceeded => Action::LoginOk,
            AuthEventKind::LoginFailed => Action::LoginFailed,
            AuthEventKind::LoginRateLimited => Action::LoginRateLimited,
            AuthEventKind::RefreshSucceeded => Action::RefreshOk,
            AuthEventKind::RefreshFailed => Action::RefreshFailed,
            AuthEventKind::TokenRejected => Action::TokenRejected,
        };
        // A refusal of a caller that proved nobody is written within the budget.
        if !e.proven {
            let client = e.client_ip.unwrap_or(IpAddr::from([0u8; 4]));
            if !self.budget.admit(client) {
                return;
            }
        }
        let mut rec = Record::new(action, e.status);
        rec.user = e.user.map(str::to_owned);
        rec.fs = e.fs.map(str::to_owned);
        rec.client = e.client_ip.map(|ip| ip.to_string());
        rec.detail = match e.key_sha256 {
            // The key a login proved, named as create-user and replace-key entries name it.
            Some(k) => Some(serde_json::json!({ "public_key_sha256": k }).to_string()),
            None => (e.reason != "ok").then(|| e.reason.to_owned()),
        };
        // A refused entry means the log has failed: the route's sync point answers 503.
        let _ = self.data.audit().submit(rec);
    }
}

/// What a request did, filled in as the handler learns it.
///
/// An upload runs in its connection's task (handing every body chunk to another task cost
/// about 8 % of a large PUT's CPU), so hyper drops it if the client hangs up. Once its
/// commit has been issued ([`Who::committing`]), a `Who` dropped before [`seal_answer`]
/// writes its entry itself: status 499 (nginx's "client closed request"), outcome unknown,
/// so no change can land unrecorded.
#[derive(Debug)]
pub struct Who {
    /// The operation.
    pub action: Action,
    /// The user, once the token checked out.
    pub user: Option<String>,
    /// The filesystem, once the token checked out.
    pub fs: Option<String>,
    /// The path, once it parsed.
    pub path: Option<String>,
    /// A move's destination.
    pub to: Option<String>,
    /// Set when a commit has been issued; with it, the log and the client's address for
    /// the entry written on drop.
    on_drop: Option<(Arc<DataDir>, IpAddr)>,
    /// Held from [`Who::committing`] until the entry is written (by [`seal_answer`] or on
    /// drop): a shutdown waits for it before the log closes, also when the request itself
    /// runs in no tracked task (an upload's body and answer stay in the connection's task).
    _tracked: Option<tokio_util::task::task_tracker::TaskTrackerToken>,
}

impl Who {
    /// Nothing known yet but the operation.
    pub fn new(action: Action) -> Self {
        Self {
            action,
            user: None,
            fs: None,
            path: None,
            to: None,
            on_drop: None,
            _tracked: None,
        }
    }

    /// The request is about to issue a change that may land even if the request is then
    /// dropped: from now on, dropping this `Who` unsealed writes an entry (status 499,
    /// detail `client_closed`), and `tasks` (the server's shutdown) waits for that entry.
    pub fn committing(
        &mut self,
        data: &Arc<DataDir>,
        client: IpAddr,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        self.on_drop = Some((data.clone(), client));
        self._tracked = Some(tasks.token());
    }

    fn record(&mut self, client: IpAddr, status: u16, detail: Option<&str>) -> Record {
        Record {
            action: self.action,
            user: self.user.take(),
            fs: self.fs.take(),
            path: self.path.take(),
            to: self.to.take(),
            client: Some(client.to_string()),
            status,
            detail: detail.map(str::to_owned),
        }
    }
}

impl Drop for Who {
    fn drop(&mut self) {
        if let Some((data, client)) = self.on_drop.take() {
            let rec = self.record(client, 499, Some("client_closed"));
            // A refused entry means the log has failed; nothing more can be done here.
            let _ = data.audit().submit(rec);
        }
    }
}

/// Writes the request's entry, then lets the answer go; 503 if the entry cannot be written.
/// A request refused before it proved who sent it is recorded within `budget` (counted,
/// not written, over it), with its paths cut to
/// [`MAX_UNVERIFIED_PATH`](crate::audit_budget::MAX_UNVERIFIED_PATH) bytes.
pub async fn seal_answer(
    data: &DataDir,
    budget: &AuditBudget,
    mut who: Who,
    client: IpAddr,
    result: Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let (status, detail) = match &result {
        Ok(r) => (r.status(), None),
        Err(e) => (e.status, Some(e.code)),
    };
    // A change whose commit was issued and answered success: it is stored, whatever the
    // entry's fate below, and a refusal must not read as if nothing was done.
    let changed = who.on_drop.is_some() && matches!(&result, Ok(r) if r.status().is_success());
    // Sealed here: no second entry on drop.
    who.on_drop = None;
    if who.user.is_none() && status.as_u16() >= 400 {
        if !budget.admit(client) {
            return result;
        }
        who.path = who.path.take().map(cut_path);
        who.to = who.to.take().map(cut_path);
    }
    let rec = who.record(client, status.as_u16(), detail);
    match data.audit().record(rec).await {
        Ok(()) => result,
        Err(_) if changed => Err(ApiError::audit_unavailable_after_change()),
        Err(_) => Err(ApiError::audit_unavailable()),
    }
}

/// 503 before doing anything, when the log has already failed.
pub fn refuse_if_failed(data: &DataDir) -> Result<(), ApiError> {
    audit_mark(data).map(|_| ())
}

/// The log's state before a route submits entries without looking at the result (the
/// login hook), for its [`efs_core::audit::AuditLog::sync_point`]; 503 when the log has
/// already failed.
pub fn audit_mark(data: &DataDir) -> Result<AuditMark, ApiError> {
    let mark = data.audit().mark();
    if data.audit().is_failed() {
        Err(ApiError::audit_unavailable())
    } else {
        Ok(mark)
    }
}

/// Tries [`efs_core::audit::AuditLog::recover`] while the audit log is failed: the first
/// try [`RECOVER_FIRST`] after the failure is seen, and each try, failed or not, doubles the
/// wait before the next one up to [`RECOVER_MAX`]; the wait starts over once the log has
/// worked for [`RECOVER_MAX`]. So a disk that stays full, or fills again as soon as space
/// is freed, costs a try (and a new audit file) a minute at most. Runs as long as the
/// server.
pub async fn recover_when_failed(data: Arc<DataDir>) {
    const POLL: Duration = Duration::from_millis(250);
    let mut wait = RECOVER_FIRST;
    let mut next_try: Option<Instant> = None;
    let mut recovered_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(POLL).await;
        if !data.audit().is_failed() {
            next_try = None;
            if recovered_at.is_some_and(|t| t.elapsed() >= RECOVER_MAX) {
                wait = RECOVER_FIRST;
                recovered_at = None;
            }
            continue;
        }
        let due = *next_try.get_or_insert_with(|| Instant::now() + wait);
        if Instant::now() < due {
            continue;
        }
        wait = (wait * 2).min(RECOVER_MAX);
        next_try = Some(Instant::now() + wait);
        let d = data.clone();
        match tokio::task::spawn_blocking(move || d.audit().recover()).await {
            Ok(Ok(true)) => recovered_at = Some(Instant::now()),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(
                error = %e,
                "the audit log still cannot be written: requests stay refused (503); next try in {} s",
                wait.as_secs()
            ),
            Err(e) => tracing::error!(error = %e, "the audit log's recovery did not finish"),
        }
    }
}
