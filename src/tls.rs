//! TLS for the client and peer ports, as etcd's `--cert-file` & co. and
//! `--peer-cert-file` & co. configure it: what the files say, turned into
//! rustls configurations (ring provider) that follow the files.
//!
//! - Rotation without restart: a [`Reloading`] configuration looks at its
//!   files' modification times at most once a second, on use, and rebuilds
//!   itself when one changed; the next handshake uses the new certificate,
//!   CA or CRL. A rebuild that fails (a key written before its certificate)
//!   keeps the previous configuration and is tried again a second later.
//! - Server side ([`ServerTls`]): the certificate, and with
//!   `--client-cert-auth` (or a trusted CA, as etcd) a client certificate
//!   verified against the trusted CA and the CRL; with
//!   `--peer-cert-allowed-cn` its common name must match too.
//! - Client side ([`Dialer`]): how a member dials other members' peer URLs:
//!   `https://` ones over TLS with its peer certificate as client
//!   certificate and the peer CA as roots (an auto-TLS member, whose peers
//!   have self-signed certificates, does not verify them: etcd's
//!   `InsecureSkipVerify` for self-signed certificates). Peer connections
//!   leave from the host of the member's first listen peer URL when that is
//!   a specific IP (see [`Dialer::with_source`]), so whatever sits between
//!   members (a firewall rule, a fault-injecting proxy in the tests) can
//!   tell which member a connection comes from.
//! - `--auto-tls`/`--peer-auto-tls`: a self-signed certificate in
//!   `<data-dir>/fixtures/{client,peer}`, made once and kept.
//!
//! This module knows nothing of actors or services: the listeners take
//! [`TlsIncoming`], the peer clients take a [`Dialer`].

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme, SupportedProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Config;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Files are looked at no more often than this.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// What is wrong with a TLS setting or file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A flag's value is not accepted.
    #[error("--{flag}: {why}")]
    Flag {
        /// The flag, without dashes.
        flag: &'static str,
        /// Why.
        why: String,
    },
    /// rustls refused the combination.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

/// etcd's (Go's) names of the TLS 1.2 cipher suites rustls implements. TLS
/// 1.3's suites are not configurable (as in Go).
const SUITES: &[(&str, rustls::SupportedCipherSuite)] = {
    use rustls::crypto::ring::cipher_suite as cs;
    &[
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ]
};

/// Suites etcd accepts (Go implements them) that rustls does not: CBC,
/// RSA key exchange, 3DES, RC4.
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// TLS versions and cipher suites (`--tls-min-version`,
/// `--tls-max-version`, `--cipher-suites`), shared by the client and peer
/// ports as in etcd.
#[derive(Clone)]
pub struct Policy {
    versions: Vec<&'static SupportedProtocolVersion>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("versions", &self.versions)
            .finish_non_exhaustive()
    }
}

fn version(flag: &'static str, v: &str) -> Result<Option<u8>, TlsError> {
    match v {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(2)),
        "TLS1.3" => Ok(Some(3)),
        "TLS1.0" | "TLS1.1" => Err(TlsError::Flag {
            flag,
            why: format!("{v} is not supported (MetaStore speaks TLS1.2 and TLS1.3)"),
        }),
        _ => Err(TlsError::Flag {
            flag,
            why: format!("unexpected TLS version {v:?} (TLS1.2 or TLS1.3)"),
        }),
    }
}

impl Policy {
    /// The policy the flags describe; refuses what etcd refuses (cipher
    /// suites with TLS 1.3 only, min above max, unknown names) and what
    /// rustls cannot do (TLS 1.0/1.1, CBC suites).
    pub fn new(min: &str, max: &str, cipher_suites: &str) -> Result<Policy, TlsError> {
        let lo = version("tls-min-version", min)?.unwrap_or(2);
        let hi = version("tls-max-version", max)?.unwrap_or(3);
        if lo > hi {
            return Err(TlsError::Flag {
                flag: "tls-max-version",
                why: format!("{max} is below --tls-min-version {min}"),
            });
        }
        let names: Vec<&str> = cipher_suites
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        // ring's provider (the brief: no aws-lc, no cmake); it has no
        // post-quantum key exchange, which etcd's Go 1.19-1.22 lacks too.
        #[allow(deprecated)]
        let mut provider = rustls::crypto::ring::default_provider();
        if !names.is_empty() {
            if lo == 3 {
                return Err(TlsError::Flag {
                    flag: "cipher-suites",
                    why: "cipher suites cannot be configured when only TLS1.3 is enabled".into(),
                });
            }
            let mut chosen: Vec<rustls::SupportedCipherSuite> = Vec::new();
            for name in names {
                match SUITES.iter().find(|(n, _)| *n == name) {
                    Some((_, s)) => {
                        if !chosen.contains(s) {
                            chosen.push(*s)
                        }
                    }
                    None if GO_ONLY_SUITES.contains(&name) => {
                        return Err(TlsError::Flag {
                            flag: "cipher-suites",
                            why: format!(
                                "{name} is not supported by MetaStore (ECDHE with AES-GCM or \
                                 ChaCha20-Poly1305 only)"
                            ),
                        })
                    }
                    None => {
                        return Err(TlsError::Flag {
                            flag: "cipher-suites",
                            why: format!("unexpected TLS cipher suite {name:?}"),
                        })
                    }
                }
            }
            // TLS 1.3's suites stay: they are not configurable, as in Go.
            let tls13: Vec<_> = provider
                .cipher_suites
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS13)
                .copied()
                .collect();
            provider.cipher_suites = chosen.into_iter().chain(tls13).collect();
        }
        let mut versions = Vec::new();
        if lo <= 2 {
            versions.push(&rustls::version::TLS12);
        }
        if hi >= 3 {
            versions.push(&rustls::version::TLS13);
        }
        Ok(Policy {
            versions,
            provider: Arc::new(provider),
        })
    }

    /// The policy of a configuration.
    pub fn from_config(cfg: &Config) -> Result<Policy, TlsError> {
        Policy::new(
            &cfg.tls_min_version,
            &cfg.tls_max_version,
            &cfg.cipher_suites,
        )
    }
}

/// The files and checks of one TLS side (client port or peer port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates that sign the other side's certificates.
    pub trusted_ca: Option<PathBuf>,
    /// Revoked client certificates (PEM or DER).
    pub crl: Option<PathBuf>,
    /// Require and verify the other side's certificate (`--client-cert-auth`;
    /// a trusted CA file alone does it too, as in etcd).
    pub client_cert_auth: bool,
    /// The other side's certificate must have this common name.
    pub allowed_cn: Option<String>,
    /// The certificate is self-signed (auto TLS): a dialer does not verify
    /// the other side.
    pub self_signed: bool,
}

impl TlsFiles {
    fn watched(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key)]
            .into_iter()
            .flatten()
            .chain(self.trusted_ca.iter())
            .chain(self.crl.iter())
            .cloned()
            .collect()
    }

    fn verifies_clients(&self) -> bool {
        self.client_cert_auth || self.trusted_ca.is_some()
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

fn read_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(path)? {
        roots.add(c).map_err(|e| file_err(path, e))?;
    }
    Ok(Arc::new(roots))
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_err(path, e))
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

fn rustls_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

/// Refuses a verified certificate whose common name is not the allowed one
/// (etcd's `--peer-cert-allowed-cn`, checked on both ends of a connection).
fn check_cn(
    allowed: &Option<String>,
    end_entity: &CertificateDer<'_>,
) -> Result<(), rustls::Error> {
    match allowed {
        Some(cn) if common_name(end_entity).as_deref() != Some(cn.as_str()) => {
            tracing::warn!(
                allowed = %cn,
                got = ?common_name(end_entity),
                "certificate common name not allowed"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
        _ => Ok(()),
    }
}

/// A client-certificate verifier that also checks the common name.
#[derive(Debug)]
struct ClientCn {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Option<String>,
}

impl ClientCertVerifier for ClientCn {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| tracing::info!(error = %e, "client certificate refused"))?;
        check_cn(&self.allowed, end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server-certificate verifier for dialing peers: the CA's verdict (or
/// none, for self-signed auto-TLS peers), then the common name.
#[derive(Debug)]
struct ServerCn {
    /// None: accept any certificate (auto TLS).
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    allowed: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ServerCn {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(inner) = &self.inner {
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        check_cn(&self.allowed, end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server configuration the files describe (read now).
fn build_server(files: &TlsFiles, policy: &Policy) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(policy.provider.clone())
        .with_protocol_versions(&policy.versions)
        .map_err(rustls_err)?;
    let builder = if files.verifies_clients() {
        let ca = files.trusted_ca.as_ref().ok_or_else(|| TlsError::Flag {
            flag: "trusted-ca-file",
            why: "client certificate authentication needs a trusted CA file".into(),
        })?;
        let mut verifier =
            WebPkiClientVerifier::builder_with_provider(read_roots(ca)?, policy.provider.clone());
        if let Some(crl) = &files.crl {
            // As etcd: a certificate is refused if the CRL lists it; one
            // the CRL does not cover is not.
            verifier = verifier
                .with_crls(read_crls(crl)?)
                .allow_unknown_revocation_status()
                .only_check_end_entity_revocation();
        }
        let inner = verifier.build().map_err(rustls_err)?;
        builder.with_client_cert_verifier(Arc::new(ClientCn {
            inner,
            allowed: files.allowed_cn.clone(),
        }))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(certs, key).map_err(rustls_err)?;
    // gRPC needs h2; /metrics and /health are served to HTTP/1.1 too.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The client configuration a member dials peers with (read now).
fn build_client(files: &TlsFiles, policy: &Policy) -> Result<rustls::ClientConfig, TlsError> {
    let inner = match (&files.trusted_ca, files.self_signed) {
        (_, true) => None,
        (Some(ca), false) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                read_roots(ca)?,
                policy.provider.clone(),
            )
            .build()
            .map_err(rustls_err)?,
        ),
        (None, false) => {
            return Err(TlsError::Flag {
                flag: "peer-trusted-ca-file",
                why: "https:// peer URLs need a trusted CA to verify members by".into(),
            })
        }
    };
    let verifier = Arc::new(ServerCn {
        inner,
        allowed: files.allowed_cn.clone(),
        provider: policy.provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(policy.provider.clone())
        .with_protocol_versions(&policy.versions)
        .map_err(rustls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(rustls_err)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A configuration rebuilt from its files when they change.
pub struct Reloading<T> {
    files: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    state: parking_lot::Mutex<Stamped<T>>,
}

struct Stamped<T> {
    checked: Instant,
    stamps: Vec<Option<(SystemTime, u64)>>,
    current: Arc<T>,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

impl<T> Reloading<T> {
    /// Builds the configuration now (an error is a start-up error).
    fn new(
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, TlsError> {
        let stamped = stamps(&files);
        let current = Arc::new(build()?);
        Ok(Reloading {
            files,
            build: Box::new(build),
            state: parking_lot::Mutex::new(Stamped {
                checked: Instant::now(),
                stamps: stamped,
                current,
            }),
        })
    }

    /// The configuration for the next handshake: rebuilt first if a file
    /// changed since the last look (at most one look a second).
    pub fn current(&self) -> Arc<T> {
        let mut st = self.state.lock();
        if st.checked.elapsed() >= RELOAD_CHECK {
            st.checked = Instant::now();
            let now = stamps(&self.files);
            if now != st.stamps {
                match (self.build)() {
                    Ok(c) => {
                        tracing::info!(files = ?self.files, "TLS files changed: reloaded");
                        st.current = Arc::new(c);
                        st.stamps = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones")
                    }
                }
            }
        }
        st.current.clone()
    }
}

/// One listening side's TLS (the client port or the peer port).
#[derive(Clone)]
pub struct ServerTls(Arc<Reloading<rustls::ServerConfig>>);

impl ServerTls {
    /// Loads the files now (errors are start-up errors).
    pub fn new(files: TlsFiles, policy: Policy) -> Result<ServerTls, TlsError> {
        let watched = files.watched();
        let r = Reloading::new(watched, move || build_server(&files, &policy))?;
        Ok(ServerTls(Arc::new(r)))
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.0.current()
    }
}

/// Accepts TCP connections and completes their TLS handshakes, several at a
/// time (a slow or silent client delays no one).
pub struct TlsIncoming {
    tcp: tokio::net::TcpListener,
    tls: ServerTls,
    handshakes:
        tokio::task::JoinSet<Option<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsIncoming {
    /// Serves TLS on `tcp`.
    pub fn new(tcp: tokio::net::TcpListener, tls: ServerTls) -> TlsIncoming {
        TlsIncoming {
            tcp,
            tls,
            handshakes: tokio::task::JoinSet::new(),
        }
    }

    /// The listening address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next connection whose handshake succeeded (TCP_NODELAY on).
    pub async fn accept(&mut self) -> (tokio_rustls::server::TlsStream<TcpStream>, SocketAddr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        let _ = tcp.set_nodelay(true);
                        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.config());
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(s)) => Some((s, addr)),
                                Ok(Err(e)) => {
                                    // etcd logs these at info too ("rejected connection").
                                    tracing::info!(remote = %addr, error = %e, "rejected connection: TLS handshake failed");
                                    None
                                }
                                Err(_) => {
                                    tracing::info!(remote = %addr, "rejected connection: TLS handshake timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        // As axum's TCP listener: out of descriptors and the like.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }
}

/// The verified client certificate's common name of a TLS connection.
pub fn peer_common_name<S>(conn: &tokio_rustls::server::TlsStream<S>) -> Option<String> {
    let (_, session) = conn.get_ref();
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| common_name(c))
}

/// How a member dials other members' peer URLs: plain for `http://`, TLS
/// with the peer certificate for `https://`.
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<Arc<Reloading<rustls::ClientConfig>>>,
    /// The local address connections are bound to before they connect.
    source: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("tls", &self.tls.is_some())
            .field("source", &self.source)
            .finish()
    }
}

impl Dialer {
    /// A dialer without TLS (every URL dialed plain; https ones refused).
    pub fn plain() -> Dialer {
        Dialer::default()
    }

    /// A dialer presenting `files`' certificate and verifying peers by its
    /// CA (loaded now: errors are start-up errors).
    pub fn new(files: TlsFiles, policy: Policy) -> Result<Dialer, TlsError> {
        let watched = files.watched();
        let r = Reloading::new(watched, move || build_client(&files, &policy))?;
        Ok(Dialer {
            tls: Some(Arc::new(r)),
            source: None,
        })
    }

    /// The peer dialer of a configuration (auto TLS resolved first, see
    /// [`Setup`]), binding the member's own peer address.
    pub fn from_config(cfg: &Config) -> Result<Dialer, TlsError> {
        let dialer = match peer_files(cfg)? {
            Some(files) => Dialer::new(files, Policy::from_config(cfg)?)?,
            None => Dialer::plain(),
        };
        Ok(dialer.with_source(peer_source(cfg)))
    }

    /// This dialer, its connections bound to `source` (any port) before
    /// they connect; None, or an unspecified address: the kernel chooses.
    /// A connection to an address of the other family, or from a loopback
    /// source to a host that is not loopback (which cannot route), is not
    /// bound.
    pub fn with_source(mut self, source: Option<std::net::IpAddr>) -> Dialer {
        self.source = source.filter(|ip| !ip.is_unspecified());
        self
    }

    /// A tonic endpoint for `url` and the connector to open it with
    /// (`Endpoint::connect_with_connector` or `..._lazy`). The endpoint's
    /// URI is always `http://`: the connector does the TLS.
    pub fn endpoint(&self, url: &str) -> Result<(tonic::transport::Endpoint, Connector), String> {
        let (plain, tls) = match url.strip_prefix("https://") {
            Some(rest) => (format!("http://{rest}"), true),
            None => (url.to_owned(), false),
        };
        let tls = match (tls, &self.tls) {
            (false, _) => None,
            (true, Some(t)) => Some(t.clone()),
            (true, None) => {
                return Err(format!(
                    "{url}: https peer URL, but no peer TLS is configured (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file or --peer-auto-tls)"
                ))
            }
        };
        let endpoint =
            tonic::transport::Endpoint::from_shared(plain).map_err(|e| format!("{url}: {e}"))?;
        Ok((
            endpoint,
            Connector {
                tls,
                source: self.source,
            },
        ))
    }
}

/// The host of the first listen peer URL, if it is an IP address.
fn peer_source(cfg: &Config) -> Option<std::net::IpAddr> {
    cfg.peer_listen_addr().ok().map(|a| a.ip())
}

/// Opens connections for a tonic channel (see [`Dialer::endpoint`]).
#[derive(Clone)]
pub struct Connector {
    tls: Option<Arc<Reloading<rustls::ClientConfig>>>,
    source: Option<std::net::IpAddr>,
}

/// Connects to `host:port`, bound to `source` where it can route (see
/// [`Dialer::with_source`]); tries each resolved address in turn.
async fn dial(host: &str, port: u16, source: Option<std::net::IpAddr>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
    for addr in tokio::net::lookup_host((host, port)).await? {
        let bind = source.filter(|s| {
            s.is_ipv4() == addr.is_ipv4() && (!s.is_loopback() || addr.ip().is_loopback())
        });
        let attempt = match bind {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let socket = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await
            }
        };
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A dialed connection, plain or TLS.
pub enum PeerIo {
    /// `http://`.
    Plain(TcpStream),
    /// `https://`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<PeerIo>;
    type Error = io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.as_ref().map(|t| t.current());
        let source = self.source;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in URL"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let tcp = dial(&host, port, source).await?;
            let _ = tcp.set_nodelay(true);
            let io = match tls {
                None => PeerIo::Plain(tcp),
                Some(config) => {
                    let name = ServerName::try_from(host)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let s = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await?;
                    PeerIo::Tls(Box::new(s))
                }
            };
            Ok(hyper_util::rt::TokioIo::new(io))
        })
    }
}

impl AsyncRead for PeerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerIo::Plain(s) => s.is_write_vectored(),
            PeerIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

fn opt_path(s: &str) -> Option<PathBuf> {
    (!s.trim().is_empty()).then(|| PathBuf::from(s.trim()))
}

/// Where auto TLS keeps a side's self-signed certificate.
fn fixtures(cfg: &Config, side: &str) -> PathBuf {
    cfg.data_dir.join("fixtures").join(side)
}

/// The client port's TLS files (None: no TLS configured). With
/// `--auto-tls` and no certificate given, the self-signed one (see
/// [`ensure_self_signed`]).
pub fn client_files(cfg: &Config) -> Result<Option<TlsFiles>, TlsError> {
    let (cert, key) = (opt_path(&cfg.cert_file), opt_path(&cfg.key_file));
    let (cert, key, self_signed) = match (cert, key) {
        (Some(c), Some(k)) => (c, k, false),
        (None, None) if cfg.auto_tls => {
            let dir = fixtures(cfg, "client");
            (dir.join("cert.pem"), dir.join("key.pem"), true)
        }
        (None, None) => return Ok(None),
        (Some(_), None) | (None, Some(_)) => {
            return Err(TlsError::Flag {
                flag: "cert-file",
                why: "--cert-file and --key-file must both be given".into(),
            })
        }
    };
    Ok(Some(TlsFiles {
        cert,
        key,
        trusted_ca: opt_path(&cfg.trusted_ca_file),
        crl: opt_path(&cfg.client_crl_file),
        client_cert_auth: cfg.client_cert_auth,
        allowed_cn: None,
        self_signed,
    }))
}

/// The peer port's TLS files (None: no TLS configured), as
/// [`client_files`] with the `--peer-*` flags.
pub fn peer_files(cfg: &Config) -> Result<Option<TlsFiles>, TlsError> {
    let (cert, key) = (opt_path(&cfg.peer_cert_file), opt_path(&cfg.peer_key_file));
    let (cert, key, self_signed) = match (cert, key) {
        (Some(c), Some(k)) => (c, k, false),
        (None, None) if cfg.peer_auto_tls => {
            let dir = fixtures(cfg, "peer");
            (dir.join("cert.pem"), dir.join("key.pem"), true)
        }
        (None, None) => return Ok(None),
        (Some(_), None) | (None, Some(_)) => {
            return Err(TlsError::Flag {
                flag: "peer-cert-file",
                why: "--peer-cert-file and --peer-key-file must both be given".into(),
            })
        }
    };
    let allowed_cn =
        (!cfg.peer_cert_allowed_cn.is_empty()).then(|| cfg.peer_cert_allowed_cn.clone());
    Ok(Some(TlsFiles {
        cert,
        key,
        trusted_ca: opt_path(&cfg.peer_trusted_ca_file),
        crl: opt_path(&cfg.peer_crl_file),
        client_cert_auth: cfg.peer_client_cert_auth,
        allowed_cn,
        self_signed,
    }))
}

/// Makes auto TLS's self-signed certificates (`--auto-tls`,
/// `--peer-auto-tls`) unless they exist: P-256 ECDSA, organisation "etcd",
/// the listen URLs' hosts as subject alternative names, valid for
/// `--self-signed-cert-validity` years (etcd's `transport.SelfCert`).
pub fn ensure_self_signed(cfg: &Config) -> Result<(), TlsError> {
    for (side, wanted, urls) in [
        (
            "client",
            cfg.auto_tls && cfg.cert_file.is_empty(),
            &cfg.listen_client_urls,
        ),
        (
            "peer",
            cfg.peer_auto_tls && cfg.peer_cert_file.is_empty(),
            &cfg.listen_peer_urls,
        ),
    ] {
        if !wanted {
            continue;
        }
        let dir = fixtures(cfg, side);
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if cert.exists() && key.exists() {
            continue;
        }
        let hosts: Vec<String> = urls
            .split(',')
            .filter_map(|u| {
                let rest = u.trim().split_once("://").map_or(u.trim(), |(_, r)| r);
                let hostport = rest.split('/').next()?;
                let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                (!host.is_empty()).then(|| host.to_owned())
            })
            .collect();
        let (cert_pem, key_pem) = self_signed(&hosts, cfg.self_signed_cert_validity)?;
        std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
        std::fs::write(&cert, cert_pem).map_err(|e| file_err(&cert, e))?;
        write_private(&key, key_pem.as_bytes())?;
        tracing::warn!(cert = %cert.display(), "automatically generated a self-signed certificate");
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(bytes).map_err(|e| file_err(path, e))
}

/// A self-signed certificate and its key, PEM.
fn self_signed(hosts: &[String], years: u32) -> Result<(String, String), TlsError> {
    let bad = |e: rcgen::Error| TlsError::Rustls(format!("self-signed certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(bad)?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(years.max(1)));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Everything TLS of a member, loaded once at start-up.
#[derive(Clone)]
pub struct Setup {
    /// The client port's server side (None: no TLS configured).
    pub client: Option<ServerTls>,
    /// The peer port's server side.
    pub peer: Option<ServerTls>,
    /// How peers are dialed.
    pub dialer: Dialer,
}

impl Setup {
    /// Makes auto-TLS certificates if asked, then loads every file; any
    /// error refuses the start. An `https://` listen URL needs its side's
    /// certificate.
    pub fn load(cfg: &Config) -> Result<Setup, TlsError> {
        ensure_self_signed(cfg)?;
        let policy = Policy::from_config(cfg)?;
        let client = client_files(cfg)?
            .map(|f| ServerTls::new(f, policy.clone()))
            .transpose()?;
        let peer_files = peer_files(cfg)?;
        let peer = peer_files
            .clone()
            .map(|f| ServerTls::new(f, policy.clone()))
            .transpose()?;
        let dialer = match peer_files {
            Some(f) => Dialer::new(f, policy)?,
            None => Dialer::plain(),
        }
        .with_source(peer_source(cfg));
        let https = |urls: &str| urls.split(',').any(|u| u.trim().starts_with("https://"));
        if https(&cfg.listen_client_urls) && client.is_none() {
            return Err(TlsError::Flag {
                flag: "listen-client-urls",
                why: "https:// needs --cert-file and --key-file (or --auto-tls)".into(),
            });
        }
        if https(&cfg.listen_peer_urls) && peer.is_none() {
            return Err(TlsError::Flag {
                flag: "listen-peer-urls",
                why: "https:// needs --peer-cert-file and --peer-key-file (or --peer-auto-tls)"
                    .into(),
            });
        }
        Ok(Setup {
            client,
            peer,
            dialer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_suites_follow_etcds_rules() {
        assert!(Policy::new("TLS1.2", "", "").is_ok());
        assert!(Policy::new("TLS1.3", "TLS1.2", "").is_err());
        assert!(Policy::new("TLS1.1", "", "").is_err());
        let only13 = Policy::new("TLS1.3", "", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
            .unwrap_err()
            .to_string();
        assert!(only13.contains("cannot be configured"), "{only13}");
        let cbc = Policy::new("", "", "TLS_RSA_WITH_AES_128_CBC_SHA")
            .unwrap_err()
            .to_string();
        assert!(cbc.contains("not supported"), "{cbc}");
        assert!(Policy::new("", "", "TLS_FOO").is_err());
        let p = Policy::new(
            "",
            "TLS1.2",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        )
        .unwrap();
        assert_eq!(p.versions.len(), 1);
        let tls12: Vec<_> = p
            .provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .collect();
        assert_eq!(tls12.len(), 2);
    }

    /// Peer connections leave from the member's own peer address, so a
    /// proxy between members can tell who is calling; a source that cannot
    /// reach the target (loopback to elsewhere, the other family) is left
    /// to the kernel.
    #[tokio::test]
    async fn peer_connections_leave_from_the_listen_peer_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let source: std::net::IpAddr = "127.0.0.7".parse().unwrap();
        let _out = dial("127.0.0.1", port, Some(source)).await.unwrap();
        let (_, from) = listener.accept().await.unwrap();
        assert_eq!(from.ip(), source);
        let v6: std::net::IpAddr = "::1".parse().unwrap();
        let _out = dial("127.0.0.1", port, Some(v6)).await.unwrap();
        let (_, from) = listener.accept().await.unwrap();
        assert_eq!(from.ip().to_string(), "127.0.0.1");
        let any = Dialer::plain().with_source(Some("0.0.0.0".parse().unwrap()));
        assert_eq!(any.source, None, "an unspecified address binds nothing");
    }

    #[test]
    fn a_self_signed_certificate_names_its_hosts_and_loads() {
        let (cert, key) = self_signed(&["127.0.0.1".into(), "localhost".into()], 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.pem"), cert).unwrap();
        std::fs::write(dir.path().join("k.pem"), key).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("k.pem"),
            trusted_ca: None,
            crl: None,
            client_cert_auth: false,
            allowed_cn: None,
            self_signed: true,
        };
        let policy = Policy::new("", "", "").unwrap();
        ServerTls::new(files.clone(), policy.clone()).unwrap();
        Dialer::new(files, policy).unwrap();
    }
}
