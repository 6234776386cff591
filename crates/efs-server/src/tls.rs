//! TLS set-up: a certificate given by the operator, or a self-signed one generated at the
//! first start (its private key stored sealed under the starter key, its certificate also
//! written in clear to `system/tls-cert.pem` for clients' `--cacert`); optional client
//! certificates (mutual TLS) checked against a CA. The operator's certificate can be replaced
//! while the server runs ([`ServedCert::begin_reload`]: SIGHUP, `efsctl reload-tls`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use efs_core::DataDir;
use efs_core::datadir::{SECRET_TLS_CERT, SECRET_TLS_KEY};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
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
    use rustls::pki_types::pem::{self, PemObject};
    let cert_pem = read_operator_file(cert)
        .with_context(|| format!("cannot open --tls-cert {}", cert.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
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
    // The key file's bytes are read whole into memory wiped on drop (a `BufReader` would
    // leave the PEM in its own buffer, freed unwiped). Still not wiped: rustls-pki-types'
    // parser collects the key's base64 text in a plain `Vec` (and in the smaller ones it
    // outgrows), freed unwiped once the DER is decoded. The DER itself is wiped once
    // parsed (see `ServedCert::new`).
    let key_pem = zeroize::Zeroizing::new(
        read_operator_file(key)
            .with_context(|| format!("cannot open --tls-key {}", key.display()))?,
    );
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            bail!("--tls-key {} holds no private key", key.display())
        }
        // The parser's error may quote a line of the file: not shown, it is the key's.
        Err(_) => bail!(
            "--tls-key {} is not a PEM private key (a line of it does not parse)",
            key.display()
        ),
    };
    Ok(TlsMaterial {
        certs,
        key,
        generated: false,
    })
}

/// The generated certificate of this data dir, created on first use, naming `localhost`,
/// `127.0.0.1`, `::1`, this machine's host name and `names` (`--tls-name`, and the address
/// `--listen` names). Returns it with the names of `names` an existing certificate lacks (it
/// was made before they were given: `efsctl rotate-tls-key` makes one that has them).
pub fn load_or_generate(
    data: &DataDir,
    names: &[String],
) -> anyhow::Result<(TlsMaterial, Vec<String>)> {
    let pem_path = data.root().join("system").join("tls-cert.pem");
    // Something other than a file there (a directory, made by a mistaken bind mount or
    // `mkdir`) cannot be replaced by the rename that writes the file: the start stopped on
    // "Is a directory" after a warning that the file had been changed outside EFS. Said
    // before anything is generated; never removed by the server (it may hold someone's data).
    if let Ok(meta) = std::fs::symlink_metadata(&pem_path)
        && meta.is_dir()
    {
        bail!(
            "{} is a directory, where the server writes the certificate it generated (the file \
             clients pass to --cacert): move that directory away or remove it, then start again \
             (or serve your own certificate with --tls-cert and --tls-key)",
            pem_path.display()
        );
    }
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
        let named = cert_names(&cert);
        let missing = names
            .iter()
            .filter(|n| !covers(&named, n))
            .cloned()
            .collect();
        return Ok((
            TlsMaterial {
                certs: vec![cert],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
                generated: true,
            },
            missing,
        ));
    }
    let mut all = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        all.push(h.trim().to_string());
    }
    all.extend(names.iter().map(|n| canonical_name(n)));
    let mut names: Vec<String> = Vec::new();
    for n in all {
        if !n.is_empty()
            && !names
                .iter()
                .any(|m| canonical_name(m) == canonical_name(&n))
        {
            names.push(n);
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
    Ok((
        TlsMaterial {
            certs: vec![der],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der.to_vec())),
            generated: true,
        },
        Vec::new(),
    ))
}

/// A name as a certificate holds it: an IP address in its canonical form (an IPv4-mapped
/// IPv6 address as the IPv4 one clients use), a DNS name in lower case.
fn canonical_name(n: &str) -> String {
    match n.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => n.to_ascii_lowercase(),
    }
}

/// Whether a certificate holding `names` (each as [`canonical_name`]) covers `wanted`: the
/// name itself, or a wildcard `*.rest` for one label more.
fn covers(names: &[String], wanted: &str) -> bool {
    let wanted = canonical_name(wanted);
    names.iter().any(|n| {
        *n == wanted
            || n.strip_prefix("*.").is_some_and(|rest| {
                wanted
                    .split_once('.')
                    .is_some_and(|(label, tail)| !label.is_empty() && tail == rest)
            })
    })
}

/// The DNS names and IP addresses a certificate's subject alternative names hold (each as
/// [`canonical_name`]); none when it does not parse.
fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, c)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some(canonical_name(d)),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// `--tls-name`: a DNS name or an IP address for the generated certificate, spaces around
/// it trimmed (an empty one, as `EFS_TLS_NAME=` or a trailing comma gives, is `""`: left out).
/// A wildcard stands for one label of a name of two labels at least (`*.example.org`); a name
/// whose last label is all digits (`1.2.3`) is neither a DNS name nor an address.
pub fn parse_tls_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(ip.to_canonical().to_string());
    }
    let labels: Vec<&str> = s.split('.').collect();
    let wildcard = labels[0] == "*";
    let labels_ok = s.len() <= 253
        && labels.iter().enumerate().all(|(i, l)| {
            (i == 0 && wildcard)
                || (!l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-'))
        })
        && (!wildcard || labels.len() >= 3)
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if labels_ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "'{s}' is neither an IP address nor a DNS name (letters, digits and '-' between dots, the last label not all digits; '*.' before two labels at least for a wildcard)"
        ))
    }
}

/// The contents of `--tls-cert` or `--tls-key`, followed through links (certbot's `live/`
/// names are links), refused unless a regular file: a FIFO or a device there would block the
/// start, or a reload with its turn held, for as long as nothing writes to it. Read in one
/// allocation of the file's size (no copy of a key left behind by a growing buffer).
fn read_operator_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut v = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).saturating_add(1));
    f.read_to_end(&mut v)?;
    Ok(v)
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

/// The certificates of `--client-ca`, as a verifier's roots, with their fingerprints (for the
/// answer and the audit entry of a reload that replaces them).
#[derive(Debug, Clone)]
pub struct ClientCa {
    roots: Arc<rustls::RootCertStore>,
    /// SHA-256 of each certificate of the file, in its order.
    pub sha256: Vec<String>,
    /// One line for each certificate of the file that is not a CA's
    /// (`not_a_ca_warning`), beginning with `WARNING: `.
    pub warnings: Vec<String>,
}

/// Reads `--client-ca`: every certificate of the PEM file, at least one, each one rustls
/// accepts as a trust anchor. A regular file only (followed through links), as `--tls-cert`.
/// A certificate that is not a CA's gets a warning (`not_a_ca_warning`); a file of only
/// such certificates is refused: it would lock every client out (webpki does not chain a
/// client's certificate to another leaf), where refusing keeps the start from serving
/// nobody and a reload keeps the CA it had.
pub fn load_client_ca(path: &Path) -> anyhow::Result<ClientCa> {
    use rustls::pki_types::pem::PemObject;
    let pem = read_operator_file(path)
        .with_context(|| format!("cannot open --client-ca {}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("--client-ca {} is not a PEM file", path.display()))?;
    if certs.is_empty() {
        bail!(
            "--client-ca {} holds no certificate: give the PEM certificate of the CA that signs the clients' certificates",
            path.display()
        );
    }
    let sha256 = certs.iter().map(|c| fingerprint(c)).collect();
    let warnings: Vec<String> = certs
        .iter()
        .enumerate()
        .filter_map(|(i, c)| not_a_ca_warning(path, i + 1, c))
        .collect();
    if warnings.len() == certs.len() {
        bail!(
            "--client-ca {} holds no CA's certificate, so it could verify no client certificate and every client would be refused: {}",
            path.display(),
            warnings
                .iter()
                .map(|w| w.trim_start_matches("WARNING: "))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots.add(c).with_context(|| {
            format!(
                "--client-ca {}: its certificate number {} is not one a CA can be read from",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(ClientCa {
        roots: Arc::new(roots),
        sha256,
        warnings,
    })
}

/// A warning when certificate number `n` of `--client-ca` is not a CA's: a client's (or a
/// server's) certificate given where its issuer's was, which verifies no client certificate
/// (they are signed by the CA, not by that leaf). Not a CA: basic constraints CA:FALSE, or
/// none in a version 3 certificate (RFC 5280: its key then signs no certificates); a
/// version 1 certificate, which cannot say, is taken for the old-style root it usually is.
/// A self-signed one is no mistake: it verifies itself, a client presenting exactly that
/// certificate (a pinned client), so it gets no warning.
fn not_a_ca_warning(path: &Path, n: usize, der: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let why = match c.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => return None,
        Ok(Some(_)) => "basic constraints CA:FALSE",
        Ok(None) if c.version() == x509_parser::x509::X509Version::V3 => {
            "no basic constraints CA:TRUE"
        }
        Ok(None) => return None,
        // Duplicated extension: rustls' verifier refuses to build on it anyway.
        Err(_) => return None,
    };
    // Self-signed, checked by its signature (a name equal to its issuer's is not enough: a
    // CA may sign a client certificate of its own name).
    if c.subject() == c.issuer() && verifies_itself(der) {
        return None;
    }
    Some(format!(
        "WARNING: --client-ca {}: its certificate number {n} ({}) is not a CA's ({why}): no client certificate can be verified by it; give the certificate of the CA that issued it ({}) instead",
        path.display(),
        c.subject(),
        c.issuer()
    ))
}

/// Whether a client presenting `der` itself is verified by `der` taken as the only trust
/// anchor (what a pinned, self-signed client certificate is for). Only its validity period
/// is not asked: an expired pin is still a pin, and its client is refused for that.
fn verifies_itself(der: &CertificateDer<'_>) -> bool {
    use rustls::CertificateError;
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(der.clone().into_owned()).is_err() {
        return false;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let Ok(verifier) =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
    else {
        return false;
    };
    match verifier.verify_client_cert(der, &[], rustls::pki_types::UnixTime::now()) {
        Ok(_) => true,
        Err(rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) => true,
        Err(_) => false,
    }
}

/// The rustls configuration, serving `cert`; with `client_ca`, a client certificate signed
/// by it is required.
pub fn server_config(
    cert: Arc<ServedCert>,
    client_ca: Option<&ClientCa>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = cert.provider.clone();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                ca.roots.clone(),
                provider,
            )
            .build()
            .context("building the client-certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What new connections' handshakes use: the served certificate ([`ServedCert`], replaced
/// in place by a reload) inside a rustls configuration that, with `--client-ca`, a reload
/// replaces whole, since the client CA is part of it. Each connection takes the
/// configuration current when it is accepted and keeps it: a connection opened before a
/// reload stays checked against the CA it began with. A new configuration also starts
/// with an empty session cache, so that no client resumes a session the old CA admitted.
pub struct ServedTls {
    /// The certificate served (its reload lock is the whole reload's: [`ServedCert::turn`]).
    pub cert: Arc<ServedCert>,
    /// `--client-ca`, read again by a reload.
    client_ca: Option<PathBuf>,
    /// The configuration new connections take, and the client CA's fingerprints in it.
    current: RwLock<(Arc<ServerConfig>, Vec<String>)>,
}

impl std::fmt::Debug for ServedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedTls")
            .field("cert", &self.cert)
            .field("client_ca", &self.client_ca_sha256())
            .finish_non_exhaustive()
    }
}

/// A client CA read and checked by [`ServedTls::stage_client_ca`], not used yet.
pub struct StagedCa {
    config: Arc<ServerConfig>,
    /// Fingerprints of the CA's certificates used before.
    pub old_sha256: Vec<String>,
    /// Fingerprints of the new CA's certificates.
    pub new_sha256: Vec<String>,
    /// The new CA's warnings ([`ClientCa::warnings`]).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for StagedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedCa")
            .field("old_sha256", &self.old_sha256)
            .field("new_sha256", &self.new_sha256)
            .finish_non_exhaustive()
    }
}

impl ServedTls {
    /// The configuration at the start: `cert`, and `client_ca` read now; with the client
    /// CA's warnings, for the start to say.
    pub fn new(
        cert: Arc<ServedCert>,
        client_ca: Option<PathBuf>,
    ) -> anyhow::Result<(Arc<Self>, Vec<String>)> {
        let ca = client_ca.as_deref().map(load_client_ca).transpose()?;
        let config = server_config(cert.clone(), ca.as_ref())?;
        let (sha256, warnings) = ca.map(|c| (c.sha256, c.warnings)).unwrap_or_default();
        Ok((
            Arc::new(Self {
                cert,
                client_ca,
                current: RwLock::new((config, sha256)),
            }),
            warnings,
        ))
    }

    /// Whether the server was started with `--client-ca` (it then always requires a
    /// client certificate: a reload replaces the CA, never removes it).
    pub fn client_ca(&self) -> bool {
        self.client_ca.is_some()
    }

    /// Fingerprints of the client CA's certificates in use (none without `--client-ca`).
    pub fn client_ca_sha256(&self) -> Vec<String> {
        self.read().1.clone()
    }

    /// The configuration for a connection accepted now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.read().0.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Arc<ServerConfig>, Vec<String>)> {
        // Replaced whole: a panic while holding the lock cannot leave it half-written.
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `--client-ca` again (on a blocking thread, at most `READ_TIMEOUT`) and builds
    /// the configuration that would require its certificates; `None` without `--client-ca`.
    /// Nothing used changes. Call under the reload's turn ([`ServedCert::turn`]).
    pub async fn stage_client_ca(&self) -> Option<anyhow::Result<StagedCa>> {
        let path = self.client_ca.clone()?;
        let old_sha256 = self.client_ca_sha256();
        let read = tokio::task::spawn_blocking(move || load_client_ca(&path));
        let ca = match tokio::time::timeout(READ_TIMEOUT, read).await {
            Err(_) => Err(anyhow::anyhow!(
                "reading --client-ca took over {} s (a hung network mount, or something other than a file there?)",
                READ_TIMEOUT.as_secs()
            )),
            Ok(Ok(r)) => r,
            Ok(Err(e)) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(anyhow::anyhow!("the server is shutting down")),
            },
        };
        Some(ca.and_then(|ca| {
            Ok(StagedCa {
                config: server_config(self.cert.clone(), Some(&ca))?,
                old_sha256,
                new_sha256: ca.sha256,
                warnings: ca.warnings,
            })
        }))
    }

    /// Requires `staged`'s client CA from the next accepted connection on. Call under the
    /// reload's turn, once its audit entry is written.
    pub fn install_client_ca(&self, staged: StagedCa) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            (staged.config, staged.new_sha256);
    }
}

/// Warn when a certificate loaded by a reload has less than this left, or less than a third of
/// its lifetime if that is shorter: Let's Encrypt renews 30 days before
/// the end, so a 90-day certificate this close to it was not renewed.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// The certificate the server serves, read at every handshake: a reload replaces it for
/// the handshakes after it; connections already established keep the one they began with
/// (a TLS session never looks at the certificate again).
pub struct ServedCert {
    /// The certificate and its parsed key, with its fingerprint.
    current: RwLock<(Arc<CertifiedKey>, String)>,
    /// `--tls-cert` and `--tls-key`, read again by a reload; `None`: the generated
    /// certificate, which lives in the system database and is not reloaded.
    files: Option<(PathBuf, PathBuf)>,
    provider: Arc<CryptoProvider>,
    /// One reload at a time, held from reading the files through the audit entry to the swap
    /// ([`ReloadTurn`]), whichever triggered it (`efsctl reload-tls`, SIGHUP): two at once
    /// could each report the other's certificate as the one replaced, or log B→C before
    /// A→B. Async: it is held across the audit log's write.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ServedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCert")
            .field("sha256", &self.fingerprint())
            .field("generated", &self.files.is_none())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().0.clone())
    }
}

/// How long a reload may take to read `--tls-cert` and `--tls-key`.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a reload installs.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// Fingerprint of the certificate served before.
    pub old_sha256: String,
    /// Fingerprint of the certificate served now.
    pub new_sha256: String,
    /// The new certificate's last valid moment (UTC).
    pub not_after: time::OffsetDateTime,
    /// Set when it expires soon ([`EXPIRY_WARNING_DAYS`]).
    pub warning: Option<String>,
}

/// Why a reload installed nothing. The certificate served before stays served.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The server serves the certificate it generated: there are no files to read again.
    #[error(
        "this server serves the certificate it generated (started without --tls-cert): there is nothing to reload. The generated certificate lives in the data dir's system database; to serve your own, restart efs-server with --tls-cert and --tls-key"
    )]
    Generated,
    /// The files did not hold a certificate and key the server can serve now.
    #[error("{0:#}; the server keeps serving the certificate SHA-256 {1}")]
    Refused(anyhow::Error, String),
}

/// A reload under way: holds [`ServedCert`]'s reload lock from [`ReloadTurn::stage`] (read
/// and check, fallible) through the caller's audit entry to [`ReloadTurn::install`] (the swap,
/// infallible), so that a certificate is served only once its entry is written, and entries
/// are in the order of the swaps. Dropped without `install`, nothing changes.
pub struct ReloadTurn<'a> {
    cert: &'a ServedCert,
    _turn: tokio::sync::MutexGuard<'a, ()>,
}

/// A certificate read and checked by [`ReloadTurn::stage`], not served yet.
pub struct Staged {
    key: Arc<CertifiedKey>,
    /// What serving it changes.
    pub reloaded: Reloaded,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("reloaded", &self.reloaded)
            .finish_non_exhaustive()
    }
}

impl ServedCert {
    /// The certificate loaded at the start. `files`: where it was read from (`--tls-cert`,
    /// `--tls-key`), `None` for the generated one. Not checked for expiry: a server with an
    /// expired certificate still starts (clients refuse it; the operator renews and reloads).
    pub fn new(
        material: TlsMaterial,
        files: Option<(PathBuf, PathBuf)>,
    ) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let fingerprint = material.fingerprint();
        // rustls parses the key from a `Zeroizing` wrapper of the DER
        // (`AwsLcRs::load_private_key`), so the DER handed over is wiped once parsed; aws-lc
        // holds the parsed key.
        let key = CertifiedKey::from_der(material.certs, material.key, &provider)
            .context("the TLS certificate and key do not match or are unsupported")?;
        Ok(Arc::new(Self {
            current: RwLock::new((Arc::new(key), fingerprint)),
            files,
            provider,
            reloading: tokio::sync::Mutex::new(()),
        }))
    }

    /// SHA-256 fingerprint of the certificate served now.
    pub fn fingerprint(&self) -> String {
        self.read().1.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Arc<CertifiedKey>, String)> {
        // A panic while holding the lock cannot leave the pair half-written (it is replaced
        // whole): the value is still good.
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the reload before it to end, then starts one. Fails at once for the
    /// generated certificate (no files to read again).
    pub async fn begin_reload(&self) -> Result<ReloadTurn<'_>, ReloadError> {
        if self.files.is_none() {
            return Err(ReloadError::Generated);
        }
        Ok(self.turn().await)
    }

    /// Waits for the reload before it to end, then starts one, also with the generated
    /// certificate (a reload of `--client-ca` alone: [`ReloadTurn::has_files`] says whether
    /// [`ReloadTurn::stage`] may be called).
    pub async fn turn(&self) -> ReloadTurn<'_> {
        ReloadTurn {
            cert: self,
            _turn: self.reloading.lock().await,
        }
    }
}

impl ReloadTurn<'_> {
    /// Fingerprint of the certificate served now (which only this turn can change).
    pub fn served(&self) -> String {
        self.cert.fingerprint()
    }

    /// Whether the certificate served was read from files (`--tls-cert`), which
    /// [`ReloadTurn::stage`] reads again; false for the generated one.
    pub fn has_files(&self) -> bool {
        self.cert.files.is_some()
    }

    /// Reads `--tls-cert` and `--tls-key` again (on a blocking thread) and checks they hold
    /// what the start would accept, a key of the certificate, and a certificate valid now.
    /// Nothing served changes.
    pub async fn stage(&self) -> Result<Staged, ReloadError> {
        let Some((cert, key)) = self.cert.files.clone() else {
            return Err(ReloadError::Generated);
        };
        let old_sha256 = self.cert.fingerprint();
        let old_chain = self.cert.read().0.cert.clone();
        let provider = self.cert.provider.clone();
        let read =
            tokio::task::spawn_blocking(move || read_checked(&cert, &key, &provider, &old_chain));
        // Bounded: the turn is held meanwhile, and a file on a hung network mount (or a FIFO
        // put there) would hold every later reload, and the shutdown, for good.
        let Ok(read) = tokio::time::timeout(READ_TIMEOUT, read).await else {
            return Err(ReloadError::Refused(
                anyhow::anyhow!(
                    "reading --tls-cert and --tls-key took over {} s (a hung network mount, or something other than a file there?)",
                    READ_TIMEOUT.as_secs()
                ),
                old_sha256,
            ));
        };
        let (key, new_sha256, validity) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(ReloadError::Refused(e, old_sha256)),
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => {
                    return Err(ReloadError::Refused(
                        anyhow::anyhow!("the server is shutting down"),
                        old_sha256,
                    ));
                }
            },
        };
        Ok(Staged {
            key: Arc::new(key),
            reloaded: Reloaded {
                old_sha256,
                new_sha256,
                not_after: validity.not_after,
                warning: validity.warning,
            },
        })
    }

    /// Serves `staged` from the next handshake on, and ends the turn.
    pub fn install(self, staged: Staged) {
        *self.cert.current.write().unwrap_or_else(|p| p.into_inner()) =
            (staged.key, staged.reloaded.new_sha256);
    }
}

/// [`ReloadTurn::stage`]'s blocking part: the files read, parsed and checked; the key with
/// the certificate's fingerprint and validity.
fn read_checked(
    cert: &Path,
    key: &Path,
    provider: &Arc<CryptoProvider>,
    old_chain: &[CertificateDer<'static>],
) -> anyhow::Result<(CertifiedKey, String, Validity)> {
    let material = load_pem(cert, key)?;
    let fingerprint = material.fingerprint();
    let mut validity = check_validity(&material.certs[0], time::OffsetDateTime::now_utc())
        .with_context(|| format!("--tls-cert {}", cert.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(material.key)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: unsupported key ({e})", key.display()))?;
    // The key against each certificate of the file, so that a chain in the wrong order is
    // named as such rather than as a key of another certificate.
    if let Some(public) = signing.public_key() {
        let public = public.as_ref();
        if spki(&material.certs[0]).as_deref() != Some(public)
            && let Some(i) = material.certs[1..]
                .iter()
                .position(|c| spki(c).as_deref() == Some(public))
        {
            bail!(
                "--tls-cert {}: the key is that of the file's certificate number {}, not of its first: put the server's certificate first, then its issuers (as certbot's fullchain.pem is)",
                cert.display(),
                i + 2
            );
        }
    }
    let certified = CertifiedKey::new(material.certs, signing);
    match certified.keys_match() {
        // As `CertifiedKey::from_der`: a consistency the provider cannot tell is no refusal.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => bail!(
            "--tls-key {} is not the key of the certificate in --tls-cert {} (their public keys differ): give the key the certificate was issued for",
            key.display(),
            cert.display()
        ),
        Err(e) => bail!("--tls-key {}: unsupported key ({e})", key.display()),
    }
    let mut warnings: Vec<String> = validity.warning.take().into_iter().collect();
    warnings.extend(chain_warnings(&certified.cert, old_chain));
    validity.warning = (!warnings.is_empty()).then(|| warnings.join("; "));
    Ok((certified, fingerprint, validity))
}

/// A certificate's SubjectPublicKeyInfo, as DER (`None`: it does not parse).
fn spki(der: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(c.public_key().raw.to_vec())
}

/// What a reload installs anyway but the operator should hear of, each a mistake that clients
/// would show only as refused handshakes: a chain cut short (certbot's `cert.pem` given where
/// `fullchain.pem` was), a CA's own certificate, names the served certificate had and the new
/// one lacks.
fn chain_warnings(new: &[CertificateDer<'_>], old: &[CertificateDer<'_>]) -> Vec<String> {
    fn parse<'a>(
        d: &'a CertificateDer<'_>,
    ) -> Option<x509_parser::certificate::X509Certificate<'a>> {
        x509_parser::parse_x509_certificate(d.as_ref())
            .ok()
            .map(|(_, c)| c)
    }
    let mut out = Vec::new();
    let Some(leaf) = new.first().and_then(parse) else {
        return out;
    };
    // The leaf's issuer left out: the served chain had its certificate, the new one has not
    // (certbot's `cert.pem` given where `fullchain.pem` was). A chain that only got shorter
    // (a CA dropping a cross-signed root) or a leaf its root signed directly, served alone
    // before too, is as it was meant.
    let issuer = leaf.issuer();
    let has_issuer = |chain: &[CertificateDer<'_>]| {
        chain
            .iter()
            .filter_map(parse)
            .any(|c| c.subject() == issuer)
    };
    if issuer != leaf.subject() && !has_issuer(&new[1..]) && old.len() > 1 && has_issuer(&old[1..])
    {
        out.push(format!(
            "WARNING: the new file lacks the certificate of its issuer ({issuer}), which the chain served had: clients that trust only the root will refuse it; serve the full chain (certbot: fullchain.pem, not cert.pem)"
        ));
    }
    if leaf.is_ca() {
        out.push(
            "WARNING: the new certificate is a CA's (basic constraints CA:TRUE), not a server's: clients may refuse it".to_owned(),
        );
    }
    let names = |c: &x509_parser::certificate::X509Certificate<'_>| -> Vec<String> {
        let Ok(Some(san)) = c.subject_alternative_name() else {
            return Vec::new();
        };
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => <[u8; 4]>::try_from(*ip)
                        .ok()
                        .map(|a| std::net::Ipv4Addr::from(a).to_string()),
                    16 => <[u8; 16]>::try_from(*ip)
                        .ok()
                        .map(|a| std::net::Ipv6Addr::from(a).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    };
    if let Some(old_leaf) = old.first().and_then(parse) {
        let now = names(&leaf);
        // A name still named, or covered by a new wildcard (`*.example.com` covers
        // `a.example.com`, one label), is kept.
        let covered = |name: &str| {
            now.iter().any(|n| {
                n.eq_ignore_ascii_case(name)
                    || n.strip_prefix("*.").is_some_and(|domain| {
                        let (name, domain) = (name.as_bytes(), domain.as_bytes());
                        name.len() > domain.len() + 1 && {
                            let (label, rest) = name.split_at(name.len() - domain.len() - 1);
                            rest[0] == b'.'
                                && rest[1..].eq_ignore_ascii_case(domain)
                                && !label.contains(&b'.')
                        }
                    })
            })
        };
        let lost: Vec<String> = names(&old_leaf)
            .into_iter()
            .filter(|n| !covered(n))
            .collect();
        if !lost.is_empty() {
            out.push(format!(
                "WARNING: the new certificate no longer names {}: clients connecting by {} will refuse it",
                lost.join(", "),
                if lost.len() == 1 { "that name" } else { "those names" }
            ));
        }
    }
    out
}

/// What a start with `--tls-cert` says of the certificate's validity at `now`: a `WARNING: `
/// line when clients would refuse it (expired, not valid yet) or when it ends soon. The
/// start goes on (a renewed file is served by `efsctl reload-tls` without a restart, which
/// refuses such a file); it said nothing, while a reload of the same file was refused.
pub fn start_validity_warning(
    material: &TlsMaterial,
    cert_path: &Path,
    now: time::OffsetDateTime,
) -> Option<String> {
    let first = material.certs.first()?;
    match check_validity(first, now) {
        Ok(v) => v.warning,
        Err(e) => Some(format!(
            "WARNING: --tls-cert {}: {e}: clients will refuse it; put a valid certificate there, then efsctl reload-tls",
            cert_path.display()
        )),
    }
}

/// A certificate's validity period, and a warning when it ends soon.
#[derive(Debug)]
struct Validity {
    not_after: time::OffsetDateTime,
    warning: Option<String>,
}

/// Refuses a certificate that is not valid at `now` (expired, or not yet valid); warns when
/// it expires soon ([`expiry_warning`]).
fn check_validity(der: &CertificateDer<'_>, now: time::OffsetDateTime) -> anyhow::Result<Validity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow::anyhow!("the certificate does not parse as X.509 ({e})"))?;
    let v = cert.validity();
    let (not_before, not_after) = (v.not_before.to_datetime(), v.not_after.to_datetime());
    if now < not_before {
        bail!(
            "the certificate is not valid yet: valid from {} (now {}); is this machine's clock right?",
            utc(not_before),
            utc(now)
        );
    }
    if now > not_after {
        bail!(
            "the certificate expired on {}: renew it first",
            utc(not_after)
        );
    }
    Ok(Validity {
        not_after,
        warning: expiry_warning(not_before, not_after, now),
    })
}

/// A warning when less than [`EXPIRY_WARNING_DAYS`] or a third of the certificate's lifetime
/// (whichever is shorter) is left at `now`: a 90-day certificate warns 14 days before its
/// end, a 6-day one (which its issuer renews every few days) only in its last 2 days, not
/// at every reload.
fn expiry_warning(
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    now: time::OffsetDateTime,
) -> Option<String> {
    let left = not_after - now;
    let threshold = time::Duration::days(EXPIRY_WARNING_DAYS).min((not_after - not_before) / 3);
    (left < threshold).then(|| {
        format!(
            "WARNING: the new certificate expires in {}, on {}: renew it soon",
            time_left(left),
            utc(not_after)
        )
    })
}

/// "13 days", "1 day", "5 hours", "12 minutes", "less than a minute": whole units, rounded
/// down, in the largest unit that is not 0.
fn time_left(d: time::Duration) -> String {
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if d.whole_days() >= 1 {
        plural(d.whole_days(), "day")
    } else if d.whole_hours() >= 1 {
        plural(d.whole_hours(), "hour")
    } else if d.whole_minutes() >= 1 {
        plural(d.whole_minutes(), "minute")
    } else {
        "less than a minute".to_owned()
    }
}

/// RFC 3339, UTC, whole seconds.
pub fn utc(t: time::OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = not_before;
        params.not_after = not_after;
        params.self_signed(&key).unwrap().der().clone()
    }

    /// `--tls-name`'s values (a review of it): spaces trimmed, empty ones left out, IPv4-mapped
    /// addresses as IPv4, wildcards over two labels at least, no all-digit last label; a
    /// certificate's wildcard covers a name one label longer, not two.
    #[test]
    fn tls_names_are_checked_and_wildcards_cover_one_label() {
        assert_eq!(
            parse_tls_name(" Efs.Example.org ").unwrap(),
            "efs.example.org"
        );
        assert_eq!(parse_tls_name("").unwrap(), "");
        assert_eq!(parse_tls_name("::ffff:127.0.0.2").unwrap(), "127.0.0.2");
        assert_eq!(parse_tls_name("*.example.org").unwrap(), "*.example.org");
        for bad in [
            "*", "*.com", "1.2.3", "a..b", "-a.b", "a b", "é.test", "x.*.test",
        ] {
            assert!(parse_tls_name(bad).is_err(), "{bad}");
        }
        let named = vec!["*.wild.test".to_string(), "127.0.0.2".to_string()];
        assert!(covers(&named, "a.wild.test"));
        assert!(covers(&named, "A.Wild.Test"));
        assert!(!covers(&named, "a.b.wild.test"));
        assert!(!covers(&named, "wild.test"));
        assert!(covers(&named, "::ffff:127.0.0.2"));
        assert!(!covers(&named, "127.0.0.3"));
    }

    #[test]
    fn validity_refuses_expired_and_future_certificates_and_warns_near_the_end() {
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap();
        let day = time::Duration::days(1);
        let e = check_validity(&cert(now - 90 * day, now - day), now).unwrap_err();
        assert!(e.to_string().contains("expired on"), "{e}");
        let e = check_validity(&cert(now + day, now + 90 * day), now).unwrap_err();
        assert!(e.to_string().contains("not valid yet"), "{e}");
        let ok = check_validity(&cert(now - day, now + 60 * day), now).unwrap();
        assert!(ok.warning.is_none());
        assert_eq!(ok.not_after, now + 60 * day);
        let soon = check_validity(&cert(now - 60 * day, now + 13 * day), now).unwrap();
        let w = soon.warning.unwrap();
        assert!(
            w.starts_with("WARNING: ") && w.contains("expires in 13 days"),
            "{w}"
        );
        // The last second of its validity still counts.
        assert!(check_validity(&cert(now - day, now), now).is_ok());
        assert!(check_validity(&CertificateDer::from(vec![0x30, 0x00]), now).is_err());
        // At a start with --tls-cert: a warning, where there was none (black-box review).
        let material = |der: CertificateDer<'static>| TlsMaterial {
            certs: vec![der],
            key: PrivateKeyDer::Pkcs8(vec![0u8; 8].into()),
            generated: false,
        };
        let path = Path::new("/etc/efs/cert.pem");
        for (der, says) in [
            (cert(now - 90 * day, now - day), "expired on"),
            (cert(now + day, now + 90 * day), "not valid yet"),
            (cert(now - 60 * day, now + 13 * day), "expires in 13 days"),
        ] {
            let w = start_validity_warning(&material(der), path, now).unwrap();
            assert!(w.starts_with("WARNING: ") && w.contains(says), "{w}");
        }
        let w = start_validity_warning(&material(cert(now - 90 * day, now - day)), path, now);
        assert!(w.unwrap().contains("--tls-cert /etc/efs/cert.pem"));
        assert!(
            start_validity_warning(&material(cert(now - day, now + 60 * day)), path, now).is_none()
        );
    }

    /// A short-lived certificate warned at every reload, and said "expires in 0 days" in its
    /// last day.
    #[test]
    fn the_expiry_warning_scales_with_a_short_lifetime_and_counts_hours_in_the_last_day() {
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap();
        let (day, hour) = (time::Duration::days(1), time::Duration::hours(1));
        // 90 days: from 14 days before the end.
        assert!(expiry_warning(now - 70 * day, now + 20 * day, now).is_none());
        assert!(expiry_warning(now - 76 * day, now + 14 * day, now).is_none());
        let w = expiry_warning(now - 77 * day, now + 13 * day, now).unwrap();
        assert!(w.contains("expires in 13 days"), "{w}");
        // 6 days, renewed every few days: only in its last third, 2 days.
        assert!(expiry_warning(now - hour, now + 6 * day - hour, now).is_none());
        assert!(expiry_warning(now - 3 * day, now + 3 * day, now).is_none());
        assert!(expiry_warning(now - 4 * day, now + 2 * day, now).is_none());
        let w = expiry_warning(now - 4 * day - hour, now + 2 * day - hour, now).unwrap();
        assert!(w.contains("expires in 1 day, on"), "{w}");
        let w = expiry_warning(now - 5 * day, now + day - hour, now).unwrap();
        assert!(w.contains("expires in 23 hours"), "{w}");
        let w = expiry_warning(now - 5 * day, now + hour, now).unwrap();
        assert!(w.contains("expires in 1 hour,"), "{w}");
        let w = expiry_warning(now - 5 * day, now + time::Duration::minutes(59), now).unwrap();
        assert!(w.contains("expires in 59 minutes"), "{w}");
        let w = expiry_warning(now - 5 * day, now + time::Duration::seconds(30), now).unwrap();
        assert!(w.contains("expires in less than a minute"), "{w}");
        assert!(!w.contains(" 0 "), "{w}");
    }

    /// A staged certificate is not served until installed; a turn dropped after staging
    /// (its audit entry failed) leaves the old one served.
    #[tokio::test]
    async fn a_staged_certificate_is_served_only_once_installed() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("c.key"));
        let write = |name: &str| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(60);
            let c = params.self_signed(&key).unwrap();
            std::fs::write(&cert_path, c.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            fingerprint(c.der())
        };
        let fp_a = write("a");
        let served = ServedCert::new(
            load_pem(&cert_path, &key_path).unwrap(),
            Some((cert_path.clone(), key_path.clone())),
        )
        .unwrap();
        assert_eq!(served.fingerprint(), fp_a);
        let fp_b = write("b");
        let turn = served.begin_reload().await.unwrap();
        let staged = turn.stage().await.unwrap();
        assert_eq!(staged.reloaded.old_sha256, fp_a);
        assert_eq!(staged.reloaded.new_sha256, fp_b);
        assert_eq!(served.fingerprint(), fp_a, "staging serves nothing");
        drop((staged, turn));
        assert_eq!(served.fingerprint(), fp_a);
        let turn = served.begin_reload().await.unwrap();
        let staged = turn.stage().await.unwrap();
        turn.install(staged);
        assert_eq!(served.fingerprint(), fp_b);
        // A key file that is not PEM: refused, and nothing of it in the message.
        std::fs::write(
            &key_path,
            "-----BEGIN PRIVATE KEY-----\nsecret!!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let turn = served.begin_reload().await.unwrap();
        let e = turn.stage().await.unwrap_err().to_string();
        assert!(
            e.contains("is not a PEM private key") && !e.contains("secret"),
            "{e}"
        );
        assert!(e.contains(&fp_b), "{e}");
    }
}
