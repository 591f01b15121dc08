//! rustls setup: the configured CA is the only trust root; an optional name override for the
//! certificate check; an optional client certificate for cert auth.
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::Error;

/// Files that make up the TLS identity; read at build time so a reload picks up new files.
pub(crate) struct TlsFiles<'a> {
    pub(crate) ca_file: Option<&'a Path>,
    pub(crate) server_name: Option<&'a str>,
    pub(crate) client_cert: Option<(&'a Path, &'a Path)>,
    /// A client certificate whose key signs elsewhere (PKCS#11); wins over `client_cert`.
    pub(crate) client_resolver: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
}

/// The TLS config for the configured OpenBao: its CA, name override and, for cert auth, the
/// client certificate (shared by the HTTP client and the doctor's handshake check).
pub(crate) fn from_settings(
    openbao: &crate::config::OpenBaoSettings,
    auth: &crate::config::AuthSettings,
) -> Result<rustls::ClientConfig, Error> {
    use crate::config::{AuthSettings, ClientKey};
    let (client_cert, client_resolver) = match auth {
        AuthSettings::Cert {
            cert_file,
            key: ClientKey::File(key_file),
            ..
        } => (Some((cert_file.as_path(), key_file.as_path())), None),
        AuthSettings::Cert {
            cert_file,
            key: ClientKey::Pkcs11(p11),
            ..
        } => (
            None,
            Some(super::pkcs11::client_cert_resolver(
                p11,
                cert_file,
                openbao.timeout,
            )?),
        ),
        _ => (None, None),
    };
    client_config(&TlsFiles {
        ca_file: openbao.ca_file.as_deref(),
        server_name: openbao.tls_server_name.as_deref(),
        client_cert,
        client_resolver,
    })
}

pub(crate) fn client_config(files: &TlsFiles<'_>) -> Result<rustls::ClientConfig, Error> {
    let provider = crate::support::crypto_provider();
    let mut roots = RootCertStore::empty();
    if let Some(ca) = files.ca_file {
        let certs = read_certs("CA file", ca)?;
        if certs.is_empty() {
            return Err(Error::Tls(format!(
                "CA file {} holds no PEM certificate",
                ca.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("CA file {}: {e}", ca.display())))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = if files.ca_file.is_some() {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let name = files
            .server_name
            .map(|n| {
                ServerName::try_from(n.to_owned())
                    .map_err(|e| Error::Tls(format!("tls_server_name {n:?}: {e}")))
            })
            .transpose()?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NameOverride { inner, name }))
    } else {
        builder.with_root_certificates(roots)
    };
    if let Some(resolver) = &files.client_resolver {
        return Ok(builder.with_client_cert_resolver(resolver.clone()));
    }
    match files.client_cert {
        Some((cert, key)) => {
            let chain = read_certs("client certificate", cert)?;
            let key = read_key(key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Tls(format!("client certificate {}: {e}", cert.display())))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|source| Error::Credential {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{what} {}: not PEM: {e}", path.display())))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| Error::Credential {
        what: "client key",
        path: path.to_path_buf(),
        source,
    })?);
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| Error::Tls(format!("client key {}: not PEM: {e}", path.display())))?
        .ok_or_else(|| {
            Error::Tls(format!(
                "client key {} holds no private key",
                path.display()
            ))
        })
}

/// Verifies the chain against the configured CA and, when set, against `tls_server_name`
/// instead of the host in `openbao.address` (for addresses given as IPs or internal aliases).
struct NameOverride {
    inner: Arc<WebPkiServerVerifier>,
    name: Option<ServerName<'static>>,
}

impl fmt::Debug for NameOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameOverride")
            .field("name", &self.name)
            .finish()
    }
}

impl ServerCertVerifier for NameOverride {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.name.as_ref().unwrap_or(server_name);
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
