//! `efs remote add|list|remove`. Adding a remote settles how its TLS certificate is
//! trusted: a CA file, a fingerprint given by the operator, or trust on first use — the
//! fingerprint is shown and the user asked, as ssh does, then pinned.

use crate::exit::outln;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::RemoteAdd;
use crate::config::{self, Remote, valid_remote_name};
use crate::exit::{self, fail, fail_hint, usage};
use crate::session::Session;

pub(crate) async fn add(session: &mut Session, args: RemoteAdd) -> Result<()> {
    let name = args.name;
    if !valid_remote_name(&name) {
        return Err(usage(format!(
            "invalid remote name '{name}': use 1 to 64 letters, digits, '_' or '-'"
        )));
    }
    if session.config.remotes.contains_key(&name) {
        return Err(fail_hint(
            exit::CONFLICT,
            format!("a remote named '{name}' exists already"),
            format!("efs remote remove {name} first, or choose another name"),
        ));
    }
    let url = config::server_url(&args.url).map_err(|e| {
        fail_hint(
            exit::USAGE,
            e,
            "give the server as https://HOST:PORT, as the operator gave it (the server prints it at start)",
        )
    })?;
    let key = match args.key {
        Some(k) => absolute(k)?,
        None => default_key(session)?,
    };
    if is_public_key(&key) {
        let private = key.with_extension("");
        return Err(fail_hint(
            exit::USAGE,
            format!(
                "{} is a public key: --key takes the private key, which signs the logins",
                key.display()
            ),
            if key.extension().is_some_and(|e| e == "pub") && private.exists() {
                format!(
                    "give the private key beside it: --key {}",
                    private.display()
                )
            } else {
                "give the private key's file (the one without .pub); the public one is for the operator".to_owned()
            },
        ));
    }
    if !key.exists() {
        eprintln!(
            "efs: warning: the key {} does not exist (yet): create it with `efs keygen -o {}`",
            key.display(),
            key.display()
        );
    }

    let mut remote = Remote {
        url: url.clone(),
        user: args.user,
        key,
        fs: args.fs,
        ca: None,
        fingerprint: None,
        server_id: None,
    };
    if let Some(ca) = args.ca {
        let ca = absolute(ca)?;
        let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(usage(format!(
                "{} is not a PEM certificate (-----BEGIN CERTIFICATE-----)",
                ca.display()
            )));
        }
        remote.ca = Some(ca);
    } else if args.system_roots {
        // Neither `ca` nor `fingerprint`: the system's roots (Trust::System).
    } else if let Some(fp) = args.fingerprint {
        let fp = efs_client::parse_fingerprint(&fp).map_err(|e| {
            fail_hint(
                exit::USAGE,
                format!("invalid fingerprint: {e}"),
                "64 hex digits, colons optional, as `openssl x509 -noout -fingerprint -sha256` prints it",
            )
        })?;
        // A server that answers must present this certificate: catching a typo now is
        // kinder than a warning at the first copy. An unreachable server is not an error.
        if let Ok(Ok((_, presented))) = fetch(&url).await
            && presented != fp
        {
            return Err(fail_hint(
                exit::TLS,
                format!(
                    "{url} presents the certificate {}, not the fingerprint given ({})",
                    efs_client::format_fingerprint(&presented),
                    efs_client::format_fingerprint(&fp)
                ),
                "check the fingerprint with the operator (the server prints it at start); remote not added",
            ));
        }
        remote.fingerprint = Some(efs_client::format_fingerprint(&fp));
    } else {
        let (_, fp) = fetch(&url)
            .await
            .map_err(|_| fail(exit::NETWORK, format!("no answer from {url} within 10 s")))?
            .with_context(|| format!("reading the certificate of {url}"))?;
        let shown = efs_client::format_fingerprint(&fp);
        eprintln!("The authenticity of remote '{name}' ({url}) can't be established.");
        eprintln!("Its TLS certificate SHA-256 fingerprint is:");
        eprintln!("  {shown}");
        eprintln!(
            "Compare it with the one the server printed at start (\"TLS certificate SHA-256 fingerprint: …\")"
        );
        eprintln!(
            "or ask the operator. (A certificate from a public CA: use --system-roots instead.)"
        );
        if args.accept_fingerprint {
            eprintln!("Accepted and pinned (--accept-fingerprint).");
        } else if std::io::stdin().is_terminal() {
            eprint!("Trust it? [y/N] ");
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut answer)
                .context("reading the answer")?;
            if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                return Err(fail(
                    exit::TLS,
                    format!("certificate not trusted; remote '{name}' not added"),
                ));
            }
        } else {
            return Err(fail_hint(
                exit::TLS,
                format!(
                    "refusing to trust the certificate of {url} without asking, and there is no terminal to ask on"
                ),
                format!(
                    "check the fingerprint above, then pass --fingerprint {shown} (or --accept-fingerprint to pin whatever the server presents, for scripts), or --ca FILE"
                ),
            ));
        }
        remote.fingerprint = Some(shown);
    }

    // Record the server's identity now, over the connection just trusted, and pin it. A
    // server that answers with a certificate this trust refuses would refuse every command
    // too: the remote is not added. A server that does not answer may be down for now.
    match server_identity(&remote).await {
        Ok(id) => remote.server_id = Some(id),
        Err(e) if exit::sdk_error(&e).is_some_and(exit::is_tls) => {
            let by = match &remote.ca {
                Some(ca) => format!("the CA certificate {}", ca.display()),
                None if remote.fingerprint.is_some() => "the fingerprint given".to_owned(),
                None => "the system's root certificates".to_owned(),
            };
            return Err(fail_hint(
                exit::TLS,
                format!(
                    "the certificate of {url} is not trusted by {by} ({e:#}); remote '{name}' not added, as every command on it would fail"
                ),
                "for EFS's self-signed certificate, add the remote with --ca FILE (the operator's DATA/system/tls-cert.pem) or --fingerprint HEX (the server prints it at start)",
            ));
        }
        Err(e) => eprintln!(
            "efs: warning: could not ask {url} for its identity ({e:#}); the remote is added without it, and the first command that uses it asks"
        ),
    }
    session.config.remotes.insert(name.clone(), remote.clone());
    session.config.save(&session.dirs)?;
    config::remove_token(&session.dirs, &name)?;
    eprintln!(
        "Added remote '{name}': {url} as {}{}. Try: efs ls {name}:/",
        remote.user,
        remote
            .fs
            .as_deref()
            .map(|f| format!(", filesystem {f}"))
            .unwrap_or_default()
    );
    Ok(())
}

async fn fetch(
    url: &str,
) -> Result<efs_client::Result<(Vec<u8>, [u8; 32])>, tokio::time::error::Elapsed> {
    tokio::time::timeout(
        Duration::from_secs(10),
        efs_client::fetch_server_certificate(url),
    )
    .await
}

/// `$CONFIG/id_ed25519` when `efs keygen` made it, else `~/.ssh/id_ed25519`.
fn default_key(session: &Session) -> Result<PathBuf> {
    let own = session.dirs.default_key();
    if own.exists() {
        return absolute(own);
    }
    Ok(config::home_dir()?.join(".ssh").join("id_ed25519"))
}

/// Whether the file at `key` is a public key (an OpenSSH `ssh-ed25519 AAAA…` line or a PEM
/// `PUBLIC KEY`): given as `--key`, it was accepted and failed only at the first login.
fn is_public_key(key: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read(key) else {
        return false;
    };
    let head = String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
    let head = head.trim_start();
    head.starts_with("ssh-") || head.starts_with("-----BEGIN PUBLIC KEY-----")
}

fn absolute(p: PathBuf) -> Result<PathBuf> {
    std::path::absolute(&p).with_context(|| format!("resolving {}", p.display()))
}

#[derive(Serialize)]
struct Listed<'a> {
    name: &'a str,
    #[serde(flatten)]
    remote: &'a Remote,
}

pub(crate) fn list(session: &Session, json: bool) -> Result<()> {
    let remotes = &session.config.remotes;
    if json {
        let all: Vec<Listed<'_>> = remotes
            .iter()
            .map(|(name, remote)| Listed { name, remote })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if remotes.is_empty() {
        eprintln!("No remotes. Add one: efs remote add NAME https://HOST:PORT --user USER");
        return Ok(());
    }
    for (name, r) in remotes {
        let trust = if let Some(fp) = &r.fingerprint {
            format!("fingerprint {fp}")
        } else if let Some(ca) = &r.ca {
            format!("ca {}", ca.display())
        } else {
            "system roots".to_owned()
        };
        outln!(
            "{name}\t{}\tuser={}\tfs={}\tkey={}\t{trust}",
            r.url,
            r.user,
            r.fs.as_deref().unwrap_or("-"),
            r.key.display()
        );
    }
    Ok(())
}

pub(crate) fn remove(session: &mut Session, name: &str) -> Result<()> {
    if session.config.remotes.remove(name).is_none() {
        // Exit 2, as for an unknown remote in a path (`efs ls nope:/`).
        return Err(fail_hint(
            exit::USAGE,
            format!("no remote named '{name}'"),
            "efs remote list shows the configured remotes",
        ));
    }
    session.config.save(&session.dirs)?;
    config::remove_token(&session.dirs, name)?;
    eprintln!("Removed remote '{name}' and its cached token.");
    Ok(())
}

/// The server identity `S` named by a challenge for the remote's user (nothing is signed).
async fn server_identity(remote: &Remote) -> Result<String> {
    let client = efs_client::Client::builder(&remote.url)
        .user(remote.user.clone())
        .trust(crate::session::trust_of(remote)?)
        .retry(efs_client::RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        })
        .build()?;
    Ok(client.server_identity().await?)
}
