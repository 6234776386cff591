//! One run of `efs`: the configuration, and an SDK client per remote used, built once with
//! the remote's key, TLS trust and cached token. It also remembers which remotes were used,
//! so that a TLS failure can be explained for the right one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use efs_client::{Client, RetryPolicy, Trust};

use crate::config::{self, Config, Dirs, Remote};
use crate::exit::{self, fail_hint};

pub(crate) struct Session {
    pub dirs: Dirs,
    pub config: Config,
    clients: Mutex<HashMap<String, Client>>,
    used: Mutex<Vec<String>>,
}

impl Session {
    pub fn load() -> Result<Session> {
        let dirs = Dirs::from_env()?;
        let config = Config::load(&dirs)?;
        Ok(Session {
            dirs,
            config,
            clients: Mutex::new(HashMap::new()),
            used: Mutex::new(Vec::new()),
        })
    }

    /// The configuration of remote `name`, or a usage error that says how to add it.
    pub fn remote(&self, name: &str) -> Result<&Remote> {
        self.config.remotes.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.config.remotes.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "add one: efs remote add NAME https://HOST:PORT --user USER".to_owned()
            } else {
                format!(
                    "configured remotes: {} (efs remote list); a local path with a colon is written ./{name}:…",
                    known.join(", ")
                )
            };
            fail_hint(exit::USAGE, format!("no remote named '{name}'"), hint)
        })
    }

    /// The client of remote `name` (built on first use).
    pub async fn client(&self, name: &str) -> Result<Client> {
        if let Some(c) = self.clients.lock().expect("not poisoned").get(name) {
            return Ok(c.clone());
        }
        let mut remote = self.remote(name)?.clone();
        self.used
            .lock()
            .expect("not poisoned")
            .push(name.to_owned());
        let mut client = build_client(&self.dirs, name, &remote).await?;
        if remote.server_id.is_none() {
            // `remote add` could not ask the server for its identity: asked now, before
            // anything is signed, recorded and pinned (trust on first use, as documented),
            // so that this remote does not sign for whatever server answers from then on.
            match client.server_identity().await {
                Ok(id) => {
                    remote.server_id = Some(id.clone());
                    if let Err(e) = record_server_id(&self.dirs, name, &remote, &id) {
                        eprintln!(
                            "efs: warning: could not record the identity {id} of remote '{name}' in config.toml ({e:#}); it is pinned for this run only"
                        );
                    }
                    client = build_client(&self.dirs, name, &remote).await?;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "asking remote '{name}' for its identity (not yet recorded), before logging in"
                    )));
                }
            }
        }
        self.clients
            .lock()
            .expect("not poisoned")
            .insert(name.to_owned(), client.clone());
        Ok(client)
    }

    /// After a TLS failure: for each remote used, says whether its certificate changed
    /// (pinned remotes: the server now presents another fingerprint) — the ssh-style warning.
    pub async fn explain_tls_failure(&self) {
        let used: Vec<String> = self.used.lock().expect("not poisoned").clone();
        for name in used {
            let Some(remote) = self.config.remotes.get(&name) else {
                continue;
            };
            if let Some(pinned) = &remote.fingerprint {
                let fetched = tokio::time::timeout(
                    Duration::from_secs(10),
                    efs_client::fetch_server_certificate(&remote.url),
                )
                .await;
                let presented = match fetched {
                    Ok(Ok((_, fp))) => efs_client::format_fingerprint(&fp),
                    _ => "(could not be read)".to_owned(),
                };
                let same = efs_client::parse_fingerprint(pinned)
                    .ok()
                    .is_some_and(|p| efs_client::format_fingerprint(&p) == presented);
                if !same {
                    eprintln!("{}", changed_warning(&name, remote, pinned, &presented));
                }
            } else if let Some(ca) = &remote.ca {
                eprintln!(
                    "efs: the certificate of remote '{name}' ({}) is not signed by the CA in {}.\n\
                     If the server's certificate was replaced, get its new CA file or fingerprint from the operator, then\n  \
                     efs remote remove {name}\n  {}",
                    remote.url,
                    ca.display(),
                    remote_add_command(&name, remote, "--ca NEW.pem"),
                );
            } else {
                eprintln!(
                    "efs: the certificate of remote '{name}' ({}) is not trusted by the system's roots.\n\
                     For a self-signed server certificate, add the remote again with --ca FILE or --fingerprint HEX:\n  \
                     efs remote remove {name}\n  {}",
                    remote.url,
                    remote_add_command(&name, remote, "--fingerprint NEW-FINGERPRINT"),
                );
            }
        }
    }

    /// After a login refused because the server named another identity than the one pinned
    /// (`server_id`): for each remote used, the commands that add it again as it is
    /// configured, to run once the operator confirms the new identity (a new token-signing
    /// key) — the same certificate trust, key, user and filesystem.
    pub fn explain_identity_failure(&self) {
        let used: Vec<String> = self.used.lock().expect("not poisoned").clone();
        for name in used {
            let Some(remote) = self.config.remotes.get(&name) else {
                continue;
            };
            let Some(pinned) = &remote.server_id else {
                continue;
            };
            eprintln!("{}", identity_changed_hint(&name, remote, pinned));
        }
    }
}

/// What [`Session::explain_identity_failure`] prints for one remote.
fn identity_changed_hint(name: &str, remote: &Remote, pinned: &str) -> String {
    let trust = if let Some(fp) = &remote.fingerprint {
        format!("--fingerprint {}", shell_quoted(fp))
    } else if let Some(ca) = &remote.ca {
        format!("--ca {}", shell_quoted(&ca.display().to_string()))
    } else {
        String::new()
    };
    format!(
        "efs: remote '{name}' ({url}) is pinned to the server identity {pinned}.\n\
         If the operator replaced the server's signing key and gave you its new identity, add \
         the remote again (the new identity is recorded by remote add; compare server_id in \
         config.toml with the operator's):\n  \
         efs remote remove {quoted}\n  \
         {add}",
        url = remote.url,
        quoted = shell_quoted(name),
        add = remote_add_command(name, remote, &trust),
    )
}

/// The warning for a pinned certificate that changed, after ssh's "REMOTE HOST
/// IDENTIFICATION HAS CHANGED".
fn changed_warning(name: &str, remote: &Remote, pinned: &str, presented: &str) -> String {
    let bar = "@".repeat(62);
    format!(
        "{bar}\n\
         @    WARNING: THE CERTIFICATE OF REMOTE '{name}' HAS CHANGED!\n\
         {bar}\n\
         IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n\
         Someone could be eavesdropping on you right now (man-in-the-middle attack),\n\
         or the server's TLS certificate was replaced.\n\
         Remote:              {name} ({url})\n\
         Pinned fingerprint:  {pinned}\n\
         Server presents:     {presented}\n\
         Nothing was sent to the server. If you expected this change, check the new fingerprint\n\
         with the operator (the server prints it at start), then run:\n  \
         efs remote remove {name}\n  \
         {add}",
        url = remote.url,
        add = remote_add_command(name, remote, "--fingerprint NEW-FINGERPRINT"),
    )
}

/// The `efs remote add` command that adds `remote` again as it is configured, but trusting
/// the certificate by `trust`: every recovery hint prints this one, because a command that
/// dropped an option would log in elsewhere (another filesystem) or fail (the default key
/// instead of the remote's). Each value is quoted for a POSIX shell, so the line runs as
/// printed.
fn remote_add_command(name: &str, remote: &Remote, trust: &str) -> String {
    let mut cmd = format!(
        "efs remote add {} {} --user {} --key {}",
        shell_quoted(name),
        shell_quoted(&remote.url),
        shell_quoted(&remote.user),
        shell_quoted(&remote.key.display().to_string())
    );
    if let Some(fs) = &remote.fs {
        cmd.push_str(&format!(" --fs {}", shell_quoted(fs)));
    }
    if !trust.is_empty() {
        cmd.push(' ');
        cmd.push_str(trust);
    }
    cmd
}

/// `s` as one word for a POSIX shell: as it is when it holds only safe characters, else in
/// single quotes (a key path with a space must not break the printed command).
pub(crate) fn shell_quoted(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:@%,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The trust a remote's configuration asks for.
pub(crate) fn trust_of(remote: &Remote) -> Result<Trust> {
    if let Some(fp) = &remote.fingerprint {
        let fp =
            efs_client::parse_fingerprint(fp).context("the remote's fingerprint in config.toml")?;
        return Ok(Trust::Fingerprint(fp));
    }
    if let Some(ca) = &remote.ca {
        let pem =
            std::fs::read(ca).with_context(|| format!("reading the CA file {}", ca.display()))?;
        return Ok(Trust::CaPem(pem));
    }
    Ok(Trust::System)
}

/// Retries: the SDK's default policy, or `EFS_MAX_ATTEMPTS` attempts (at least 1).
fn retry_policy() -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    if let Some(n) = std::env::var("EFS_MAX_ATTEMPTS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        policy.max_attempts = n.max(1);
    }
    policy
}

/// Writes the identity of remote `name` into the configuration file, read again first so
/// that what another `efs` changed there meanwhile is kept; only if the remote there is still
/// the one asked (a remote removed and added again meanwhile is another server maybe).
fn record_server_id(dirs: &Dirs, name: &str, asked: &Remote, id: &str) -> Result<()> {
    let mut config = Config::load(dirs)?;
    if let Some(r) = config.remotes.get_mut(name)
        && r.server_id.is_none()
        && r.url == asked.url
        && r.user == asked.user
        && r.fs == asked.fs
    {
        r.server_id = Some(id.to_owned());
        config.save(dirs)?;
    }
    Ok(())
}

async fn build_client(dirs: &Dirs, name: &str, remote: &Remote) -> Result<Client> {
    // `remote add` refuses such a URL; this one was written into config.toml by hand.
    if let Err(e) = config::server_url(&remote.url) {
        return Err(fail_hint(
            exit::USAGE,
            format!("remote '{name}': {e}"),
            format!(
                "correct url under [remotes.{name}] in {}, e.g. url = \"https://HOST:PORT\"",
                dirs.config_file().display()
            ),
        ));
    }
    let signer = efs_client::load_signer(&remote.key)
        .await
        .with_context(|| {
            format!(
                "loading the key {} of remote '{name}'",
                remote.key.display()
            )
        })?;
    let mut builder = Client::builder(&remote.url)
        .user(remote.user.clone())
        .signer(signer)
        .trust(trust_of(remote)?)
        .retry(retry_policy());
    if let Some(fs) = &remote.fs {
        builder = builder.fs(fs.clone());
    }
    if let Some(id) = &remote.server_id {
        builder = builder.server_id(id.clone());
    }
    if let Some(token) = config::load_token(dirs, name, remote) {
        builder = builder.cached_token(token);
    }
    let (dirs2, name2, remote2) = (dirs.clone(), name.to_owned(), remote.clone());
    builder = builder.on_token(Arc::new(move |t| {
        if let Err(e) = config::store_token(&dirs2, &name2, &remote2, t) {
            tracing::warn!("could not cache the token of remote '{name2}': {e:#}");
        }
    }));
    builder
        .build()
        .with_context(|| format!("setting up remote '{name}'"))
}

#[cfg(test)]
mod tests {
    /// The printed recovery command stays one word per option, whatever the key's path.
    #[test]
    fn key_paths_are_quoted_for_the_shell() {
        assert_eq!(
            super::shell_quoted("/home/m/.ssh/id_ed25519"),
            "/home/m/.ssh/id_ed25519"
        );
        assert_eq!(
            super::shell_quoted("/home/m/my keys/k"),
            "'/home/m/my keys/k'"
        );
        assert_eq!(super::shell_quoted("/k/it's"), "'/k/it'\\''s'");
        assert_eq!(super::shell_quoted("~/k"), "'~/k'");
    }
}
