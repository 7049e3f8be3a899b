//! The TLS section of the configuration: the server's certificate and key,
//! the CA its clients' certificates must come from, and what the peer client
//! trusts and presents.

use std::path::PathBuf;

/// The TLS flags (each also a `BLOBCACHE_*` variable and a key of the config file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM, leaf first): the node then speaks HTTPS only (TLS 1.2 and 1.3, HTTP/2 by ALPN); reloaded on SIGHUP and when the file changes [default: none, plain HTTP]
    #[arg(long, env = "BLOBCACHE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1); reloaded with it [required with --tls-cert]
    #[arg(long, env = "BLOBCACHE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that clients' certificates must chain to: a connection without such a certificate reaches /healthz and /readyz only [default: none, no client certificates]
    #[arg(long, env = "BLOBCACHE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// CA certificates (PEM) the peer client trusts for https:// peers [default: the system's roots]
    #[arg(long, env = "BLOBCACHE_PEER_CA", value_name = "FILE")]
    pub peer_ca: Option<PathBuf>,
    /// The certificate chain (PEM) this node presents to its peers, for peers that ask for one (--tls-client-ca) [default: none]
    #[arg(long, env = "BLOBCACHE_PEER_CERT", value_name = "FILE")]
    pub peer_cert: Option<PathBuf>,
    /// The private key of --peer-cert (PEM) [required with --peer-cert]
    #[arg(long, env = "BLOBCACHE_PEER_KEY", value_name = "FILE")]
    pub peer_key: Option<PathBuf>,
}

/// The effective TLS configuration: files only; they are read when the node starts.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct TlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_key: Option<PathBuf>,
}

impl TlsConfig {
    /// The server's certificate and key, when it speaks HTTPS.
    pub fn server(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.tls_cert.as_ref().zip(self.tls_key.as_ref())
    }

    /// The peer client's certificate and key, when it presents one.
    pub fn peer_identity(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.peer_cert.as_ref().zip(self.peer_key.as_ref())
    }
}

impl TlsSettings {
    pub fn resolve(self) -> anyhow::Result<TlsConfig> {
        let empty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let c = TlsConfig {
            tls_cert: empty(self.tls_cert),
            tls_key: empty(self.tls_key),
            tls_client_ca: empty(self.tls_client_ca),
            peer_ca: empty(self.peer_ca),
            peer_cert: empty(self.peer_cert),
            peer_key: empty(self.peer_key),
        };
        anyhow::ensure!(
            c.tls_cert.is_some() == c.tls_key.is_some(),
            "--tls-cert and --tls-key go together: give both, or neither for plain HTTP"
        );
        anyhow::ensure!(
            c.tls_client_ca.is_none() || c.tls_cert.is_some(),
            "--tls-client-ca needs --tls-cert and --tls-key: client certificates are asked for over TLS only"
        );
        anyhow::ensure!(
            c.peer_cert.is_some() == c.peer_key.is_some(),
            "--peer-cert and --peer-key go together"
        );
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cert: bool, key: bool, ca: bool) -> TlsSettings {
        TlsSettings {
            tls_cert: cert.then(|| "c.pem".into()),
            tls_key: key.then(|| "k.pem".into()),
            tls_client_ca: ca.then(|| "ca.pem".into()),
            ..Default::default()
        }
    }

    #[test]
    fn certificate_and_key_go_together_and_client_cas_need_them() {
        assert!(settings(false, false, false).resolve().unwrap().server().is_none());
        assert!(settings(true, true, true).resolve().unwrap().server().is_some());
        let e = |s: TlsSettings| format!("{:#}", s.resolve().unwrap_err());
        assert!(e(settings(true, false, false)).contains("--tls-key"));
        assert!(e(settings(false, true, false)).contains("--tls-cert"));
        assert!(e(settings(false, false, true)).contains("--tls-client-ca needs"));
        let peer = TlsSettings {
            peer_cert: Some("p.pem".into()),
            ..Default::default()
        };
        assert!(e(peer).contains("--peer-key"));
    }
}
