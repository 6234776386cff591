//! Who signs the login challenge: a private key in memory ([`KeySigner`]) or ssh-agent
//! ([`AgentSigner`]), behind one trait ([`Signer`]).
//!
//! Only Ed25519 is supported, as the server only accepts Ed25519 keys. Private key bytes
//! live in zeroize-on-drop containers and are never printed: `Debug` shows the public key's
//! OpenSSH fingerprint, and errors name the file, never its content.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ed25519_dalek::Verifier as _;
use sha2::{Digest, Sha256};
use ssh_agent_lib::agent::Session as _;
use ssh_agent_lib::proto::{PublicCredential, SignRequest};
use ssh_key::public::KeyData;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Something that can sign with an Ed25519 key: the login's only use of the key.
#[async_trait::async_trait]
pub trait Signer: Send + Sync {
    /// Raw 32-byte Ed25519 public key.
    fn public_key(&self) -> [u8; 32];
    /// Raw Ed25519 (RFC 8032) signature over `msg`.
    async fn sign(&self, msg: &[u8]) -> Result<[u8; 64]>;
}

/// A private key held in memory (zeroized on drop).
pub struct KeySigner {
    // `SigningKey` zeroizes its secret on drop (ed25519-dalek's `zeroize` feature).
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for KeySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySigner")
            .field(
                "public_key",
                &openssh_fingerprint(&self.key.verifying_key().to_bytes()),
            )
            .finish_non_exhaustive()
    }
}

impl KeySigner {
    /// Wraps a key already in memory.
    pub fn from_signing_key(k: ed25519_dalek::SigningKey) -> Self {
        KeySigner { key: k }
    }

    /// Reads an OpenSSH private key ("-----BEGIN OPENSSH PRIVATE KEY-----", as ssh-keygen and
    /// `efs keygen` write; if encrypted, `passphrase` is used, else [`Error::Key`] explaining) or
    /// a PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----", as openssl writes). Only Ed25519.
    pub fn from_file(path: &Path, passphrase: Option<&str>) -> Result<Self> {
        let text = read_key_file(path)?;
        Self::from_pem(&text, passphrase).map_err(|e| match e {
            Error::Key(m) => Error::Key(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses the text of an OpenSSH or PKCS#8 private key (see [`KeySigner::from_file`]).
    pub fn from_pem(text: &str, passphrase: Option<&str>) -> Result<Self> {
        match key_format(text) {
            KeyFormat::OpenSsh => {
                let key = ssh_key::PrivateKey::from_openssh(text.trim()).map_err(|_| {
                    Error::Key("not a readable OpenSSH private key (damaged or truncated?)".into())
                })?;
                let key = if key.is_encrypted() {
                    let Some(pass) = passphrase else {
                        return Err(Error::Key(
                            "the key is encrypted: give its passphrase (EFS_KEY_PASSPHRASE), or add it to ssh-agent"
                                .into(),
                        ));
                    };
                    key.decrypt(pass.as_bytes()).map_err(|_| {
                        Error::Key("wrong passphrase (the key could not be decrypted)".into())
                    })?
                } else {
                    key
                };
                let Some(pair) = key.key_data().ed25519() else {
                    return Err(not_ed25519(key.algorithm().as_str()));
                };
                let seed = Zeroizing::new(pair.private.to_bytes());
                let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
                if signing.verifying_key().to_bytes() != pair.public.0 {
                    return Err(Error::Key(
                        "the private and public halves of the key do not match".into(),
                    ));
                }
                Ok(KeySigner { key: signing })
            }
            KeyFormat::Pkcs8 => {
                use ed25519_dalek::pkcs8::DecodePrivateKey as _;
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(text).map_err(|_| {
                    Error::Key(
                        "not an Ed25519 PKCS#8 private key (only Ed25519 keys are accepted)".into(),
                    )
                })?;
                Ok(KeySigner { key })
            }
            KeyFormat::EncryptedPkcs8 => Err(Error::Key(
                "encrypted PKCS#8 keys are not supported: decrypt it (`openssl pkey -in KEY -out KEY2`) or use an OpenSSH key".into(),
            )),
            KeyFormat::Other(label) => Err(Error::Key(format!(
                "a {label} key is not supported: use an Ed25519 key (`efs keygen` or `ssh-keygen -t ed25519`)"
            ))),
            KeyFormat::Unknown => Err(Error::Key(
                "not a private key (expected \"-----BEGIN OPENSSH PRIVATE KEY-----\" or \"-----BEGIN PRIVATE KEY-----\")".into(),
            )),
        }
    }

    /// The key's OpenSSH private-key text (unencrypted), for writing a new key file.
    pub fn to_openssh(&self, comment: &str) -> Result<Zeroizing<String>> {
        let pair = ssh_key::private::Ed25519Keypair::from_seed(self.key.as_bytes());
        let mut key = ssh_key::PrivateKey::from(pair);
        key.set_comment(comment);
        key.to_openssh(ssh_key::LineEnding::LF)
            .map_err(|_| Error::Key("cannot encode the key in OpenSSH format".into()))
    }
}

#[async_trait::async_trait]
impl Signer for KeySigner {
    fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    async fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        use ed25519_dalek::Signer as _;
        Ok(self.key.sign(msg).to_bytes())
    }
}

/// Signs through ssh-agent (SSH_AUTH_SOCK) with the identity whose public key is `public_key`;
/// the private key is never read.
pub struct AgentSigner {
    socket: PathBuf,
    public_key: [u8; 32],
    /// One request at a time on the agent connection; `None` after a failure (reconnect).
    session: tokio::sync::Mutex<Option<AgentClient>>,
}

type AgentClient = ssh_agent_lib::client::Client<tokio::net::UnixStream>;

impl std::fmt::Debug for AgentSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSigner")
            .field("socket", &self.socket)
            .field("public_key", &openssh_fingerprint(&self.public_key))
            .finish_non_exhaustive()
    }
}

impl AgentSigner {
    /// Connects to `socket` and checks that the agent holds `public_key` ([`Error::Key`] if not).
    pub async fn connect(socket: &Path, public_key: [u8; 32]) -> Result<Self> {
        let mut client = agent_connect(socket).await?;
        let ids = client
            .request_identities()
            .await
            .map_err(|e| Error::Key(format!("ssh-agent did not list its keys: {e}")))?;
        let held = ids
            .iter()
            .any(|id| id.credential.key_data().ed25519().map(|k| k.0) == Some(public_key));
        if !held {
            return Err(Error::Key(format!(
                "ssh-agent does not hold the key {} (add it with ssh-add)",
                openssh_fingerprint(&public_key)
            )));
        }
        Ok(AgentSigner {
            socket: socket.to_owned(),
            public_key,
            session: tokio::sync::Mutex::new(Some(client)),
        })
    }

    async fn sign_once(&self, client: &mut AgentClient, msg: &[u8]) -> Result<[u8; 64]> {
        let request = SignRequest {
            credential: PublicCredential::Key(KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(
                self.public_key,
            ))),
            data: msg.to_vec(),
            // No flags: the RSA hash flags do not apply to Ed25519.
            flags: 0,
        };
        let sig = client
            .sign(request)
            .await
            .map_err(|e| Error::Key(format!("ssh-agent refused to sign: {e}")))?;
        if sig.algorithm() != ssh_key::Algorithm::Ed25519 {
            return Err(Error::Key(format!(
                "ssh-agent answered with a {} signature, not Ed25519",
                sig.algorithm()
            )));
        }
        // An Ed25519 SSH signature blob carries the raw 64-byte RFC 8032 signature.
        let raw: [u8; 64] = sig.as_bytes().try_into().map_err(|_| {
            Error::Key("ssh-agent returned an Ed25519 signature of the wrong length".into())
        })?;
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&self.public_key)
            .map_err(|_| Error::Key("the agent's key is not a valid Ed25519 key".into()))?;
        vk.verify(msg, &ed25519_dalek::Signature::from_bytes(&raw))
            .map_err(|_| Error::Key("ssh-agent's signature does not verify".into()))?;
        Ok(raw)
    }
}

#[async_trait::async_trait]
impl Signer for AgentSigner {
    fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    async fn sign(&self, msg: &[u8]) -> Result<[u8; 64]> {
        let mut guard = self.session.lock().await;
        // A connection that failed before (or that the agent closed) is opened again once.
        for attempt in 0..2 {
            let mut client = match guard.take() {
                Some(c) => c,
                None => agent_connect(&self.socket).await?,
            };
            match self.sign_once(&mut client, msg).await {
                Ok(sig) => {
                    *guard = Some(client);
                    return Ok(sig);
                }
                Err(e) if attempt == 1 => return Err(e),
                Err(e) => tracing::debug!("ssh-agent signing failed, reconnecting: {e}"),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

async fn agent_connect(socket: &Path) -> Result<AgentClient> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        Error::Key(format!(
            "cannot connect to ssh-agent at {}: {e}",
            socket.display()
        ))
    })?;
    Ok(ssh_agent_lib::client::Client::new(stream))
}

/// The signer a client should use for a key file: if SSH_AUTH_SOCK is set and the agent holds
/// the key whose public half is `<key>.pub` (or derivable), an AgentSigner; else a KeySigner
/// from the file (passphrase from EFS_KEY_PASSPHRASE if encrypted).
pub async fn load_signer(key_path: &Path) -> Result<Arc<dyn Signer>> {
    let socket = std::env::var_os("SSH_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    let passphrase = std::env::var("EFS_KEY_PASSPHRASE").ok().map(Zeroizing::new);
    load_signer_with(
        key_path,
        socket.as_deref(),
        passphrase.as_ref().map(|p| p.as_str()),
    )
    .await
}

/// [`load_signer`] with the agent socket and passphrase given explicitly instead of taken
/// from `SSH_AUTH_SOCK` and `EFS_KEY_PASSPHRASE`.
///
/// The public key comes from `<key>.pub` when it exists (so that with the agent the private
/// key file is never read), else from the private key file: an unencrypted key, or an
/// encrypted OpenSSH key, whose public half is stored in clear.
///
/// The files are read, and an encrypted key decrypted (its KDF takes about half a second
/// by design), on a blocking thread: the runtime's other tasks go on meanwhile.
pub async fn load_signer_with(
    key_path: &Path,
    agent_socket: Option<&Path>,
    passphrase: Option<&str>,
) -> Result<Arc<dyn Signer>> {
    if let Some(socket) = agent_socket {
        let path = key_path.to_owned();
        match blocking(move || public_key_for(&path)).await {
            Ok(public) => match AgentSigner::connect(socket, public).await {
                Ok(agent) => {
                    tracing::debug!("signing with ssh-agent at {}", socket.display());
                    return Ok(Arc::new(agent));
                }
                Err(e) => tracing::debug!("not using ssh-agent: {e}"),
            },
            Err(e) => tracing::debug!("no public key to look up in ssh-agent: {e}"),
        }
    }
    let path = key_path.to_owned();
    let passphrase = passphrase.map(|p| Zeroizing::new(p.to_owned()));
    let signer =
        blocking(move || KeySigner::from_file(&path, passphrase.as_ref().map(|p| p.as_str())))
            .await?;
    Ok(Arc::new(signer))
}

/// Runs `f` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Key(format!("reading the key failed: {e}")))?
}

/// The public key of a key file, without decrypting anything: `<key>.pub`, else the
/// private key file's public half.
fn public_key_for(key_path: &Path) -> Result<[u8; 32]> {
    let mut pub_path = key_path.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    if let Ok(line) = std::fs::read_to_string(&pub_path) {
        return parse_public_key(&line)
            .map_err(|e| Error::Key(format!("{}: {e}", pub_path.display())));
    }
    let text = read_key_file(key_path)?;
    match key_format(&text) {
        KeyFormat::OpenSsh => {
            let key = ssh_key::PrivateKey::from_openssh(text.trim())
                .map_err(|_| Error::Key("not a readable OpenSSH private key".into()))?;
            key.public_key()
                .key_data()
                .ed25519()
                .map(|k| k.0)
                .ok_or_else(|| not_ed25519(key.algorithm().as_str()))
        }
        _ => KeySigner::from_pem(&text, None).map(|k| k.public_key()),
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<String>> {
    let bytes =
        Zeroizing::new(std::fs::read(path).map_err(|e| {
            Error::Key(format!("cannot read the key file {}: {e}", path.display()))
        })?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::Key(format!("{}: not a text (PEM) key file", path.display())))?;
    Ok(Zeroizing::new(text.to_owned()))
}

enum KeyFormat {
    OpenSsh,
    Pkcs8,
    EncryptedPkcs8,
    Other(&'static str),
    Unknown,
}

fn key_format(text: &str) -> KeyFormat {
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        KeyFormat::OpenSsh
    } else if text.contains("-----BEGIN PRIVATE KEY-----") {
        KeyFormat::Pkcs8
    } else if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        KeyFormat::EncryptedPkcs8
    } else if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
        KeyFormat::Other("RSA")
    } else if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        KeyFormat::Other("ECDSA")
    } else {
        KeyFormat::Unknown
    }
}

fn not_ed25519(alg: &str) -> Error {
    Error::Key(format!(
        "a {alg} key is not supported: use an Ed25519 key (`efs keygen` or `ssh-keygen -t ed25519`)"
    ))
}

/// Parses a public key: an OpenSSH line (`ssh-ed25519 AAAA… comment`) or PEM
/// SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`). Only Ed25519.
pub fn parse_public_key(text: &str) -> Result<[u8; 32]> {
    let text = text.trim();
    if text.starts_with("-----BEGIN PUBLIC KEY-----") {
        use ed25519_dalek::pkcs8::DecodePublicKey as _;
        return ed25519_dalek::VerifyingKey::from_public_key_pem(text)
            .map(|k| k.to_bytes())
            .map_err(|_| Error::Key("not an Ed25519 public key (PEM)".into()));
    }
    let key = ssh_key::PublicKey::from_openssh(text)
        .map_err(|_| Error::Key("not an OpenSSH public key line".into()))?;
    key.key_data()
        .ed25519()
        .map(|k| k.0)
        .ok_or_else(|| not_ed25519(key.algorithm().as_str()))
}

/// The OpenSSH public line of a key: `ssh-ed25519 <base64 wire blob> <comment>`, the form
/// `efsctl create-user --pubkey` takes.
pub fn openssh_public_line(public_key: &[u8; 32], comment: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(wire_blob(public_key));
    if comment.is_empty() {
        format!("ssh-ed25519 {b64}")
    } else {
        format!("ssh-ed25519 {b64} {comment}")
    }
}

/// The key's OpenSSH fingerprint, `SHA256:` + unpadded base64 of SHA-256 of the wire blob,
/// as `ssh-keygen -lf` prints it.
pub fn openssh_fingerprint(public_key: &[u8; 32]) -> String {
    let digest = Sha256::digest(wire_blob(public_key));
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// SSH wire form of an Ed25519 public key: u32 length, "ssh-ed25519", u32 length, the key.
fn wire_blob(public_key: &[u8; 32]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(51);
    blob.extend_from_slice(&11u32.to_be_bytes());
    blob.extend_from_slice(b"ssh-ed25519");
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(public_key);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;

    fn test_key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    async fn assert_signs_as(signer: &dyn Signer, expected: &ed25519_dalek::SigningKey) {
        assert_eq!(signer.public_key(), expected.verifying_key().to_bytes());
        let msg = b"efs-auth-v1\nefs-x\napp1\nnonce";
        let sig = signer.sign(msg).await.unwrap();
        expected
            .verifying_key()
            .verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .unwrap();
    }

    #[tokio::test]
    async fn reads_openssh_key_written_by_ssh_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = test_key(7);
        let text = KeySigner::from_signing_key(key.clone())
            .to_openssh("test")
            .unwrap();
        let path = dir.path().join("id_ed25519");
        std::fs::write(&path, text.as_bytes()).unwrap();
        let signer = KeySigner::from_file(&path, None).unwrap();
        assert_signs_as(&signer, &key).await;
        // The public half is derivable without a .pub file.
        assert_eq!(
            public_key_for(&path).unwrap(),
            key.verifying_key().to_bytes()
        );
    }

    #[tokio::test]
    async fn reads_encrypted_openssh_key_with_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let key = test_key(8);
        let pair = ssh_key::private::Ed25519Keypair::from_seed(key.as_bytes());
        let encrypted = ssh_key::PrivateKey::from(pair)
            .encrypt(&mut ssh_key::rand_core::OsRng, "correct horse")
            .unwrap();
        let path = dir.path().join("id_ed25519");
        std::fs::write(
            &path,
            encrypted
                .to_openssh(ssh_key::LineEnding::LF)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let e = KeySigner::from_file(&path, None).unwrap_err();
        assert!(
            matches!(&e, Error::Key(m) if m.contains("encrypted")),
            "{e}"
        );
        let e = KeySigner::from_file(&path, Some("wrong")).unwrap_err();
        assert!(
            matches!(&e, Error::Key(m) if m.contains("wrong passphrase")),
            "{e}"
        );
        let signer = KeySigner::from_file(&path, Some("correct horse")).unwrap();
        assert_signs_as(&signer, &key).await;
        // The public half of an encrypted OpenSSH key is stored in clear.
        assert_eq!(
            public_key_for(&path).unwrap(),
            key.verifying_key().to_bytes()
        );
    }

    #[tokio::test]
    async fn reads_pkcs8_pem() {
        let dir = tempfile::tempdir().unwrap();
        let key = test_key(9);
        let pem = key.to_pkcs8_pem(Default::default()).unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, pem.as_bytes()).unwrap();
        let signer = KeySigner::from_file(&path, None).unwrap();
        assert_signs_as(&signer, &key).await;
    }

    #[test]
    fn refuses_what_is_not_an_ed25519_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n").unwrap();
        assert!(
            matches!(KeySigner::from_file(&path, None), Err(Error::Key(m)) if m.contains("RSA"))
        );
        std::fs::write(&path, "hello").unwrap();
        assert!(matches!(
            KeySigner::from_file(&path, None),
            Err(Error::Key(_))
        ));
        let missing = dir.path().join("missing");
        assert!(
            matches!(KeySigner::from_file(&missing, None), Err(Error::Key(m)) if m.contains("missing"))
        );
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let key = test_key(0xab);
        let signer = KeySigner::from_signing_key(key.clone());
        let shown = format!("{signer:?} {signer:#?}");
        let secret_hex = hex::encode(key.as_bytes());
        assert!(!shown.contains(&secret_hex), "{shown}");
        assert!(!shown.contains("171, 171"), "{shown}"); // 0xab as decimal bytes
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
        assert!(shown.contains("SHA256:"), "{shown}");
    }

    #[test]
    fn public_key_lines_and_fingerprints() {
        // RFC 8032 test 1's public key; the fingerprint is the one docs/protocol.md gives.
        let pk: [u8; 32] =
            hex::decode("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(
            openssh_fingerprint(&pk),
            "SHA256:bbXpuKG6zhzdmnxq256TlqzFBzRl2f6OOg722cYNbU8"
        );
        let line = openssh_public_line(&pk, "me@host");
        assert!(line.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"));
        assert_eq!(parse_public_key(&line).unwrap(), pk);
        assert_eq!(parse_public_key(&openssh_public_line(&pk, "")).unwrap(), pk);
        assert!(parse_public_key("ssh-rsa AAAA").is_err());
    }
}
