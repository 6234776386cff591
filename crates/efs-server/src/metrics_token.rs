//! The bearer token `/_efs/metrics` requires (`--metrics-token-file`).
//!
//! The metrics name every filesystem and count its files and bytes, which a medical-records
//! store must not tell anyone who can reach its port. A Prometheus scrape carries no EFS
//! login, so the endpoint takes a token of its own, as Prometheus's `authorization`
//! (`credentials_file`) sends it. The server keeps only the token's SHA-256 and compares
//! digests in constant time.

use std::path::Path;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Shortest token accepted, in bytes.
pub const MIN_LEN: usize = 16;

/// SHA-256 of a presented or configured token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Reads the token from `path` (surrounding whitespace, such as a final newline, is not
/// part of it) and returns its digest. Refuses a token shorter than [`MIN_LEN`] bytes or one
/// with characters a header value cannot carry plainly (only visible ASCII).
pub fn load(path: &Path) -> anyhow::Result<[u8; 32]> {
    let raw = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the metrics token file {}", path.display()))?,
    );
    let token = raw.trim();
    if token.len() < MIN_LEN {
        bail!(
            "the metrics token in {} is shorter than {MIN_LEN} bytes",
            path.display()
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "the metrics token in {} may hold only visible ASCII characters (no spaces)",
            path.display()
        );
    }
    Ok(digest(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_read_trimmed_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("tok");
        std::fs::write(&p, "0123456789abcdef-token\n").unwrap();
        assert_eq!(load(&p).unwrap(), digest("0123456789abcdef-token"));
        std::fs::write(&p, "short\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("shorter than 16 bytes"), "{e}");
        std::fs::write(&p, "0123456789 abcdef").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("visible ASCII"), "{e}");
        let e = load(&t.path().join("absent")).unwrap_err().to_string();
        assert!(e.contains("cannot read the metrics token file"), "{e}");
        // Secret material stays out of the message.
        assert!(!e.contains("0123456789"), "{e}");
    }
}
