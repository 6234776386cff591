//! `efs keygen`: a new Ed25519 key in OpenSSH format (the one ssh-keygen writes), and the
//! public line to hand to the operator.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ssh_key::private::Ed25519Keypair;
use ssh_key::{HashAlg, LineEnding, PrivateKey};
use zeroize::Zeroizing;

use crate::config::{Dirs, create_private_dir};
use crate::exit::{self, fail_hint};

pub(crate) fn run(dirs: &Dirs, output: Option<PathBuf>, comment: Option<String>) -> Result<()> {
    let path = output.unwrap_or_else(|| dirs.default_key());
    let pub_path = public_path(&path);
    for p in [&path, &pub_path] {
        if p.exists() {
            return Err(fail_hint(
                exit::CONFLICT,
                format!("{} exists already", p.display()),
                "efs keygen never overwrites a key: choose another file with -o FILE, or remove the old one if you are sure",
            ));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }

    // The seed comes straight from the system's generator; the buffer is wiped after use.
    let mut seed = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(seed.as_mut())
        .map_err(|_| anyhow::anyhow!("the system's random generator failed"))?;
    let keypair = Ed25519Keypair::from_seed(&seed);
    let comment = comment.unwrap_or_else(default_comment);
    let key = PrivateKey::new(keypair.into(), comment).context("building the key")?;
    let private = key
        .to_openssh(LineEnding::LF)
        .context("encoding the private key")?;
    let public = key
        .public_key()
        .to_openssh()
        .context("encoding the public key")?;

    write_new(&path, private.as_bytes(), 0o600)?;
    write_new(&pub_path, format!("{public}\n").as_bytes(), 0o644)?;

    let fp = key.public_key().fingerprint(HashAlg::Sha256);
    println!(
        "Wrote the private key {} (mode 0600; keep it secret)",
        path.display()
    );
    println!("and the public key {}.", pub_path.display());
    println!("Key fingerprint: {fp}");
    println!();
    println!("Give the operator this public line (it is not secret):");
    println!("  {public}");
    println!("The operator registers it with:");
    println!(
        "  efsctl create-user YOUR-NAME --fs FILESYSTEM --pubkey {}",
        pub_path.display()
    );
    println!("Then add the server as a remote:");
    let key_opt = if path == dirs.default_key() {
        String::new()
    } else {
        format!(" --key {}", path.display())
    };
    println!("  efs remote add NAME https://HOST:PORT --user YOUR-NAME --fs FILESYSTEM{key_opt}");
    Ok(())
}

/// `FILE.pub`, as ssh-keygen names it.
fn public_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Creates `path` (never replacing a file: `create_new`) with `mode`, and fsyncs it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// `user@host`, as ssh-keygen comments its keys.
fn default_comment() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "efs".to_owned());
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}
