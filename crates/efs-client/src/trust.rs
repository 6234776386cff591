//! Which server certificates the client accepts, and the rustls configurations that
//! enforce it.
//!
//! Every configuration is built on the aws-lc-rs provider passed explicitly, never on a
//! process-wide default. A pinned fingerprint ([`Trust::Fingerprint`]) accepts exactly one
//! leaf certificate; when the server presents another, the error names both fingerprints.

use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Which server certificates to accept.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The system's / webpki roots.
    System,
    /// Only certificates chaining to these PEM CA certificates (e.g. the server's self-signed
    /// tls-cert.pem). The host name is checked.
    CaPem(Vec<u8>),
    /// Exactly the leaf certificate whose SHA-256 (of DER) is this (pinning; hostname not checked).
    Fingerprint([u8; 32]),
}

/// Parses "AB:CD:…" or "abcd…" (64 hex digits, colons optional, any case), as
/// `openssl x509 -noout -fingerprint -sha256` prints and efs-server prints at start.
///
/// A leading `sha256 Fingerprint=` (openssl's prefix) or `SHA256:` is accepted too.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32]> {
    let mut t = s.trim();
    for prefix in ["sha256 fingerprint=", "sha256:"] {
        // `get`, not slicing: the cut may fall inside a multi-byte character (user input).
        if let Some(head) = t.get(..prefix.len())
            && head.eq_ignore_ascii_case(prefix)
        {
            t = t[prefix.len()..].trim();
        }
    }
    let hex_digits: String = t.chars().filter(|c| *c != ':').collect();
    let bad = || {
        Error::Config(format!(
            "not a SHA-256 fingerprint: expected 64 hex digits (colons optional), got {:?}",
            truncate(s, 120)
        ))
    };
    if hex_digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hex_digits, &mut out).map_err(|_| bad())?;
    Ok(out)
}

/// "AB:CD:…" uppercase with colons.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The one provider every configuration of this crate uses.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Notes that a server asked for a client certificate, which this client has none of (it
/// answers with none): a server that requires one (`efs-server --client-ca`) then ends the
/// connection with an alert the client does not always read before it sees the connection
/// closed (TLS 1.3 sends it after the client's side of the handshake), so the failure is told
/// by this note ([`crate::http::Http::failure`]).
#[derive(Debug, Default)]
pub(crate) struct CertRequests(pub(crate) Arc<std::sync::atomic::AtomicBool>);

impl rustls::client::ResolvesClientCert for CertRequests {
    fn resolve(
        &self,
        _acceptable_issuers: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, std::sync::atomic::Ordering::Release);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// The rustls configuration that enforces `trust`, offering HTTP/2 and HTTP/1.1.
pub(crate) fn client_config(trust: &Trust) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("cannot set up TLS: {e}")))?;
    let mut config = match trust {
        Trust::System => {
            let verifier = rustls_platform_verifier::Verifier::new(provider).map_err(|e| {
                Error::Tls(format!(
                    "cannot load the system's trusted certificates: {e}"
                ))
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        Trust::CaPem(pem) => {
            use rustls::pki_types::pem::PemObject as _;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    Error::Config(format!("cannot read the CA certificate (PEM): {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::Config(format!("the CA certificate cannot be used: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(Error::Config(
                    "the CA file holds no certificate (\"-----BEGIN CERTIFICATE-----\")".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier::new(*fp, provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts exactly the leaf certificate whose SHA-256 is `pinned`, and checks the handshake
/// signature with it, so the peer must hold that certificate's private key.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    pinned: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// The fingerprint of the last certificate that did not match, for the error message.
    last_mismatch: Mutex<Option<[u8; 32]>>,
}

impl PinnedVerifier {
    pub(crate) fn new(pinned: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        PinnedVerifier {
            pinned,
            provider,
            last_mismatch: Mutex::new(None),
        }
    }
}

/// The server presented another certificate than the pinned one.
#[derive(Debug)]
pub(crate) struct FingerprintMismatch {
    pub(crate) seen: [u8; 32],
    pub(crate) pinned: [u8; 32],
}

impl std::fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate changed: it now presents SHA-256 fingerprint {}, \
             but {} is pinned. If the operator replaced the certificate, confirm the new \
             fingerprint with them and pin it; otherwise someone may be intercepting the connection",
            format_fingerprint(&self.seen),
            format_fingerprint(&self.pinned)
        )
    }
}

impl std::error::Error for FingerprintMismatch {}

/// Compares without an early exit, so timing does not tell how many bytes matched.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if ct_eq(&seen, &self.pinned) {
            return Ok(ServerCertVerified::assertion());
        }
        if let Ok(mut m) = self.last_mismatch.lock() {
            *m = Some(seen);
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(FingerprintMismatch {
                seen,
                pinned: self.pinned,
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts any certificate (after checking the handshake signature with it) and records
/// the leaf: trust-on-first-use, where the caller shows the fingerprint and asks.
#[derive(Debug)]
struct RecordingVerifier {
    provider: Arc<CryptoProvider>,
    leaf: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut leaf) = self.leaf.lock() {
            *leaf = Some(end_entity.as_ref().to_vec());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects WITHOUT verifying and returns the server's leaf certificate DER and its SHA-256,
/// for trust-on-first-use (the caller shows the fingerprint and asks). Never sends a request.
pub async fn fetch_server_certificate(url: &str) -> Result<(Vec<u8>, [u8; 32])> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| Error::Config(format!("invalid URL {url:?}: {e}")))?;
    if parsed.scheme() != "https" {
        return Err(Error::Config(format!(
            "the URL must start with https:// (got {url:?})"
        )));
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::Config(format!("no host in {url:?}")))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let (connect_host, server_name) = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => (ip.to_string(), ServerName::IpAddress(ip.into())),
        Err(_) => (
            bare.to_owned(),
            ServerName::try_from(bare.to_owned())
                .map_err(|_| Error::Config(format!("invalid host name in {url:?}")))?,
        ),
    };
    let provider = provider();
    let verifier = Arc::new(RecordingVerifier {
        provider: provider.clone(),
        leaf: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("cannot set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tokio::net::TcpStream::connect((connect_host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::Transport(format!("connecting to {connect_host}:{port} timed out")))?
    .map_err(|e| Error::Transport(format!("cannot connect to {connect_host}:{port}: {e}")))?;
    let tls = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        connector.connect(server_name, tcp),
    )
    .await
    .map_err(|_| Error::Transport("the TLS handshake timed out".into()))?
    .map_err(|e| Error::Tls(format!("TLS handshake failed: {e}")))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .or_else(|| verifier.leaf.lock().ok().and_then(|l| l.clone()))
        .ok_or_else(|| Error::Tls("the server presented no certificate".into()))?;
    drop(tls);
    let fp: [u8; 32] = Sha256::digest(&leaf).into();
    Ok((leaf, fp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trip() {
        let fp: [u8; 32] = core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(5));
        let text = format_fingerprint(&fp);
        assert_eq!(text.len(), 32 * 3 - 1);
        assert!(text.chars().all(|c| c == ':' || c.is_ascii_hexdigit()));
        assert_eq!(text, text.to_uppercase());
        assert_eq!(parse_fingerprint(&text).unwrap(), fp);
        // Colons optional, any case, surrounding blanks and openssl's prefix.
        assert_eq!(parse_fingerprint(&hex::encode(fp)).unwrap(), fp);
        assert_eq!(parse_fingerprint(&text.to_lowercase()).unwrap(), fp);
        assert_eq!(
            parse_fingerprint(&format!("  sha256 Fingerprint={text}\n")).unwrap(),
            fp
        );
    }

    #[test]
    fn fingerprint_wrong_length_or_digits() {
        let fp = [0xabu8; 32];
        let text = format_fingerprint(&fp);
        assert!(parse_fingerprint(&text[..text.len() - 3]).is_err());
        assert!(parse_fingerprint(&format!("{text}:AB")).is_err());
        assert!(parse_fingerprint("").is_err());
        let bad = text.replacen("AB", "XY", 1);
        assert!(matches!(parse_fingerprint(&bad), Err(Error::Config(_))));
    }

    #[test]
    fn fingerprint_non_ascii_is_an_error_not_a_panic() {
        // Regression: the prefix check sliced the input by bytes and panicked when the cut
        // fell inside a multi-byte character.
        let text = format_fingerprint(&[0xabu8; 32]);
        for bad in [
            "éééé".to_owned(),
            "é".repeat(10),
            "sha256é".to_owned(),
            "sha256 fingerprintéé".to_owned(),
            format!("SHA256:é{text}"),
            "é".repeat(32),
            "ü".repeat(64),
        ] {
            assert!(
                matches!(parse_fingerprint(&bad), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
        // A prefix in another case still works.
        assert_eq!(
            parse_fingerprint(&format!("Sha256:{text}")).unwrap(),
            [0xab; 32]
        );
    }

    #[test]
    fn constant_time_compare() {
        let a = [1u8; 32];
        let mut b = a;
        assert!(ct_eq(&a, &b));
        b[31] = 2;
        assert!(!ct_eq(&a, &b));
    }

    #[test]
    fn mismatch_message_shows_both_fingerprints() {
        let m = FingerprintMismatch {
            seen: [0x11; 32],
            pinned: [0x22; 32],
        };
        let s = m.to_string();
        assert!(s.contains("changed"));
        assert!(s.contains(&format_fingerprint(&[0x11; 32])));
        assert!(s.contains(&format_fingerprint(&[0x22; 32])));
    }

    #[test]
    fn ca_pem_without_certificate_is_refused() {
        assert!(matches!(
            client_config(&Trust::CaPem(b"hello".to_vec())),
            Err(Error::Config(_))
        ));
    }
}
