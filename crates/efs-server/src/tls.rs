//! TLS set-up: a certificate given by the operator, or a self-signed one generated at the
//! first start (its private key stored sealed under the starter key, its certificate also
//! written in clear to `system/tls-cert.pem` for clients' `--cacert`); optional client
//! certificates (mutual TLS) checked against a CA.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use efs_core::DataDir;
use efs_core::datadir::{SECRET_TLS_CERT, SECRET_TLS_KEY};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// The certificate chain and key in use, and its fingerprint.
pub struct TlsMaterial {
    /// Server certificate chain (leaf first).
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// True if EFS generated it.
    pub generated: bool,
}

impl TlsMaterial {
    /// SHA-256 of the leaf certificate, as `openssl x509 -noout -fingerprint -sha256` prints it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.certs[0])
    }
}

/// `AB:CD:…` SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Loads the operator's PEM files.
pub fn load_pem(cert: &Path, key: &Path) -> anyhow::Result<TlsMaterial> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .with_context(|| format!("cannot open --tls-cert {}", cert.display()))?,
    ))
    .collect::<Result<_, _>>()
    .with_context(|| {
        format!(
            "--tls-cert {} is not a PEM certificate file",
            cert.display()
        )
    })?;
    if certs.is_empty() {
        bail!("--tls-cert {} holds no certificate", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key)
            .with_context(|| format!("cannot open --tls-key {}", key.display()))?,
    ))
    .with_context(|| format!("--tls-key {} is not a PEM private key", key.display()))?
    .with_context(|| format!("--tls-key {} holds no private key", key.display()))?;
    Ok(TlsMaterial {
        certs,
        key,
        generated: false,
    })
}

/// The generated certificate of this data dir, created on first use.
pub fn load_or_generate(data: &DataDir) -> anyhow::Result<TlsMaterial> {
    let pem_path = data.root().join("system").join("tls-cert.pem");
    if let (Some(cert), Some(key)) = (data.secret(SECRET_TLS_CERT)?, data.secret(SECRET_TLS_KEY)?) {
        let cert = CertificateDer::from(cert.to_vec());
        // The file clients are told to trust: written again whenever it does not hold the
        // certificate served (someone who can write the data dir could otherwise put their
        // own there, and a client trusting it would trust them).
        let expected = pem_encode(cert.as_ref());
        match read_regular_file(&pem_path) {
            Ok(found) if found == expected.as_bytes() => {}
            Ok(_) => {
                tracing::warn!(
                    path = %pem_path.display(),
                    "the certificate file did not hold the certificate this server serves (changed outside EFS): written again; a client that took it from there meanwhile trusts another certificate"
                );
                write_cert_pem(&pem_path, &cert)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_cert_pem(&pem_path, &cert)?,
            Err(e) => {
                tracing::warn!(
                    path = %pem_path.display(),
                    error = %e,
                    "the certificate file did not hold the certificate this server serves (a link, or not readable: changed outside EFS): written again; a client that took it from there meanwhile trusts another certificate"
                );
                write_cert_pem(&pem_path, &cert)?;
            }
        }
        return Ok(TlsMaterial {
            certs: vec![cert],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
            generated: true,
        });
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the TLS key")?;
    let mut params = rcgen::CertificateParams::new(names).context("certificate names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "efs-server (self-signed)");
    // Valid from a day ago (a client whose clock runs a little behind still accepts it; rcgen's
    // default would be 1975) for ten years.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .context("self-signing the TLS certificate")?;
    let der = cert.der().clone();
    // Wiped once stored (rcgen's `KeyPair` keeps a copy of its own, freed unwiped: noted in
    // docs/design.md).
    let key_der = zeroize::Zeroizing::new(key.serialize_der());
    data.put_secret(SECRET_TLS_KEY, &key_der)?;
    data.put_secret(SECRET_TLS_CERT, &der)?;
    write_cert_pem(&pem_path, &der)?;
    Ok(TlsMaterial {
        certs: vec![der],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec())),
        generated: true,
    })
}

/// The contents of `path` if it is a regular file; an error for anything else (a FIFO put
/// there would block the start, a link point anywhere), which is then replaced.
fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

/// Writes the certificate file whole or not at all (a new file renamed over the old one: a
/// client reading it meanwhile gets one certificate or the other, never part of one).
fn write_cert_pem(path: &Path, der: &CertificateDer<'_>) -> anyhow::Result<()> {
    let text = pem_encode(der.as_ref());
    let tmp = path.with_extension("pem.new");
    let _ = std::fs::remove_file(&tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The rustls configuration; with `client_ca`, a client certificate signed by it is required.
pub fn server_config(
    material: TlsMaterial,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> =
                rustls_pemfile::certs(&mut std::io::BufReader::new(
                    std::fs::File::open(ca)
                        .with_context(|| format!("cannot open --client-ca {}", ca.display()))?,
                ))
                .collect::<Result<_, _>>()
                .with_context(|| format!("--client-ca {} is not a PEM file", ca.display()))?;
            if certs.is_empty() {
                bail!("--client-ca {} holds no certificate", ca.display());
            }
            for c in certs {
                roots.add(c).context("adding a --client-ca certificate")?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .context("building the client-certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // rustls parses the key from a `Zeroizing` wrapper of the DER (`AwsLcRs::load_private_key`),
    // so the DER handed over is wiped once parsed; aws-lc holds the parsed key.
    let mut cfg = builder
        .with_single_cert(material.certs, material.key)
        .context("the TLS certificate and key do not match or are unsupported")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
