//! TLS with rustls and the ring provider.
//!
//! The server side ([`ServerTls`]): a certificate chain and key from PEM
//! files, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, and optionally a CA that
//! clients' certificates must chain to. The files are read again when they
//! change (cert-manager rotates certificates in place) and on SIGHUP; a set
//! that does not load (a key that does not match the certificate, a file half
//! written) leaves the one before in force, so a rotation never takes the
//! node off the air.
//!
//! The peer side ([`PeerTls`]): what the node's client to its peers trusts
//! (`--peer-ca`, else the system's roots) and presents (`--peer-cert`). Peers
//! found through a DNS name are reached by address; their certificates are
//! checked against that name.

mod settings;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use prometheus::{IntCounter, IntCounterVec};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use settings::{TlsConfig, TlsSettings};

use crate::metrics;

/// The one crypto provider of the node.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Every certificate in a PEM file, in order.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate in the file", path.display());
    Ok(certs)
}

/// The private key in a PEM file.
pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| {
        format!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file",
            path.display()
        )
    })
}

/// A CA bundle as a root store.
pub fn read_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: a CA certificate that cannot be used", path.display()))?;
    }
    Ok(roots)
}

/// The server's TLS configuration, as loaded last.
#[derive(Debug)]
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    current: RwLock<Arc<rustls::ServerConfig>>,
    reloads: IntCounterVec,
    pub handshake_failures: IntCounter,
    pub plain_http: IntCounter,
}

impl ServerTls {
    /// Load the server's files, or `None` without `--tls-cert`. Files that do
    /// not load stop the start.
    pub fn open(config: &TlsConfig, registry: &prometheus::Registry) -> anyhow::Result<Option<Arc<ServerTls>>> {
        let Some((cert, key)) = config.server() else {
            return Ok(None);
        };
        let first = server_config(cert, key, config.tls_client_ca.as_deref())?;
        let tls = ServerTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: config.tls_client_ca.clone(),
            current: RwLock::new(Arc::new(first)),
            reloads: metrics::counter_vec(
                registry,
                "blobcache_tls_reloads_total",
                "Reloads of the TLS certificate, key and client CA, by result (ok, error: the files before stay in force)",
                &["result"],
            ),
            handshake_failures: metrics::counter(
                registry,
                "blobcache_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out (a client that does not trust the certificate, a bad client certificate, a silent client)",
            ),
            plain_http: metrics::counter(
                registry,
                "blobcache_tls_plain_http_total",
                "Plain HTTP requests sent to the TLS port (answered 400)",
            ),
        };
        tracing::info!(cert = %cert.display(), client_ca = ?config.tls_client_ca, "TLS on");
        Ok(Some(Arc::new(tls)))
    }

    fn build(&self) -> anyhow::Result<rustls::ServerConfig> {
        server_config(&self.cert, &self.key, self.client_ca.as_deref())
    }

    /// Whether clients are asked for a certificate.
    pub fn asks_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().expect("tls config").clone())
    }
}

fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<rustls::ServerConfig> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(VERSIONS)?;
    let builder = match client_ca {
        Some(ca) => {
            // Clients without a certificate get through the handshake and
            // reach only the probes (the HTTP layer refuses the rest): the
            // kubelet's probes carry none.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider)
                .allow_unauthenticated()
                .build()
                .with_context(|| format!("--tls-client-ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .with_context(|| format!("--tls-cert {} with --tls-key {}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl crate::reload::Reload for ServerTls {
    fn what(&self) -> &'static str {
        "TLS certificate"
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert.clone(), self.key.clone()];
        files.extend(self.client_ca.clone());
        files
    }

    fn reload(&self) {
        match self.build() {
            Ok(config) => {
                *self.current.write().expect("tls config") = Arc::new(config);
                self.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                self.reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %format!("{e:#}"), "the TLS files do not load; keeping the certificate loaded before");
            }
        }
    }
}

/// What the peer client trusts and presents.
#[derive(Debug, Clone)]
pub struct PeerTls {
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    /// For peers found through DNS: the name their certificates carry.
    dns_name: Option<String>,
}

impl PeerTls {
    pub fn new(config: &TlsConfig, dns_name: Option<String>) -> PeerTls {
        PeerTls {
            ca: config.peer_ca.clone(),
            identity: config.peer_identity().map(|(c, k)| (c.clone(), k.clone())),
            dns_name,
        }
    }

    /// Whether anything differs from a default client.
    pub fn is_default(&self) -> bool {
        self.ca.is_none() && self.identity.is_none() && self.dns_name.is_none()
    }

    /// The files the client is made from.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.ca.iter().cloned().collect();
        if let Some((c, k)) = &self.identity {
            files.extend([c.clone(), k.clone()]);
        }
        files
    }

    /// The client configuration for the peer client.
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let provider = provider();
        let roots = match &self.ca {
            Some(ca) => read_roots(ca).with_context(|| "--peer-ca")?,
            None => system_roots(),
        };
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .context("the peer client's CA")?;
        let verifier = Arc::new(PeerVerifier {
            inner: verifier,
            dns_name: self
                .dns_name
                .as_deref()
                .and_then(|n| ServerName::try_from(n.to_string()).ok()),
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(VERSIONS)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .with_context(|| format!("--peer-cert {} with --peer-key {}", cert.display(), key.display()))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The system's trusted roots (those that do not load are skipped).
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "a system root certificate store could not be read");
    }
    let (_added, skipped) = roots.add_parsable_certificates(found.certs);
    if skipped > 0 {
        tracing::debug!(skipped, "system root certificates that could not be used");
    }
    roots
}

/// The web PKI's checks, except that a peer reached by address (found
/// through DNS) must carry the cluster's DNS name rather than the address.
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    dns_name: Option<ServerName<'static>>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = match (server_name, &self.dns_name) {
            (ServerName::IpAddress(_), Some(dns)) => dns,
            _ => server_name,
        };
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
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

/// Whether a client showed a certificate from `--tls-client-ca`: on the
/// requests of a TLS connection when client certificates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertificate {
    pub verified: bool,
}
