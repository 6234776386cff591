//! The admin socket (`system/admin.sock`, mode 0600): `efsctl` sends one JSON
//! [`AdminRequest`] per line and reads one JSON [`AdminResponse`] per line. Only a local
//! user that can open the data dir can reach it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use efs_core::admin::{self, AdminRequest, AdminResponse, Operator};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::app::AppState;

/// Binds the socket (replacing a stale one) and serves it until the task is dropped.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        // redb already refused a second server on this data dir, so the socket is stale.
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    // The data dir is 0700, so the socket is never reachable by others even before chmod.
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves admin connections.
pub async fn serve(listener: UnixListener, state: Arc<AppState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Without a pause, an error that persists (EMFILE) would spin a core.
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(crate::server::ACCEPT_RETRY_DELAY).await;
                continue;
            }
        };
        let st = state.clone();
        // The audit log names the local account on the other end of the socket.
        let op = Operator {
            user: stream
                .peer_cred()
                .map(|c| format!("uid:{}", c.uid()))
                .unwrap_or_else(|_| "uid:unknown".into()),
            via: "admin-socket".into(),
        };
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<AdminRequest>(&line) {
                    Ok(req) => handle(&st, req, &op).await,
                    Err(e) => AdminResponse::err(format!("bad admin request: {e}")),
                };
                let mut out = serde_json::to_vec(&resp).expect("serialising JSON cannot fail");
                out.push(b'\n');
                if w.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn handle(st: &AppState, req: AdminRequest, op: &Operator) -> AdminResponse {
    if matches!(req, AdminRequest::Health) {
        // Not recorded: it reads nothing and changes nothing.
        return admin::health(&st.data);
    }
    if matches!(req, AdminRequest::CacheClear) {
        if let Err(e) = admin::record_admin(&st.data, op, &req, true).await {
            return AdminResponse::err(e.to_string());
        }
        let before = st.cache.weighted_size();
        st.cache.clear();
        let lookups = st.data.forget_lookups();
        return AdminResponse {
            ok: true,
            lines: vec![format!(
                "Cleared the decrypted cache ({before} bytes) and {lookups} remembered path lookups"
            )],
            ..Default::default()
        };
    }
    let mutates = !matches!(
        req,
        AdminRequest::ListFs
            | AdminRequest::ListUsers
            | AdminRequest::Fsck { .. }
            | AdminRequest::Status { .. }
            | AdminRequest::AcceptSystem
            | AdminRequest::RotateKey { .. }
            | AdminRequest::Reencrypt { .. }
            | AdminRequest::Backup { .. }
    );
    // Changes run one at a time, each with its reload: two concurrent read-modify-writes of a
    // user (a grant and a revoke) would otherwise lose one, and an older snapshot of the
    // users could be installed after a newer one, bringing back revoked tokens.
    let _guard = if mutates {
        Some(ADMIN_CHANGES.lock().await)
    } else {
        None
    };
    let resp = admin::execute_as(&st.data, req, op).await;
    if mutates && resp.ok {
        // On failure `reload` empties the user cache: every login and token is refused until
        // a later reload succeeds, never checked against the list from before the change.
        let reloaded = st.users.reload(&st.data);
        st.auth.invalidate_cache();
        if let Err(e) = reloaded {
            tracing::error!(
                error = %e,
                "reloading users after an admin change failed; refusing every login and token"
            );
            return AdminResponse::err(format!(
                "the change was saved, but the server could not reload its users ({e}); it \
                 refuses every login and token until a reload succeeds: fix the cause, then \
                 restart the server (or run another user or grant change)"
            ));
        }
    }
    resp
}

/// Serialises admin changes (see [`handle`]).
static ADMIN_CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
