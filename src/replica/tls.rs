//! TLS to the target with libpq's `sslmode` semantics: the certificate verifiers and the
//! rustls configuration of a connection's [`TlsSettings`] (what its URL says; `url.rs` reads
//! them from the URL, this file knows nothing else of it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres_rustls::MakeRustlsConnect;

use super::sqlstate::PostgresError;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Verification {
    Nothing,
    Chain,
    ChainAndHost,
}

pub(super) enum TlsFailure {
    /// The server answered the TLS request with "no" and the sslmode insists.
    Refused,
    /// The handshake rejected the server's certificate.
    Certificate,
}

/// A TLS failure is permanent (retrying gets the same certificate), unless it is the network
/// cutting the handshake, which [`classify`] treats like any other cut connection.
pub(super) fn tls_failure(e: &tokio_postgres::Error) -> Option<TlsFailure> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.to_string().contains("server does not support TLS") {
            return Some(TlsFailure::Refused);
        }
        if c.downcast_ref::<rustls::Error>().is_some()
            || c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return Some(TlsFailure::Certificate);
        }
        cause = c.source();
    }
    None
}

/// `sslmode=require` without a root certificate: encryption against eavesdropping only, as in
/// libpq. The handshake signatures are still checked, so the session key is the server's.
#[derive(Debug)]
struct NoCertificateCheck(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` and `verify-full`. webpki checks the chain before the name, so for `verify-ca`
/// a name error means the chain passed.
///
/// A server certificate that is itself in `sslrootcert` (the self-signed certificate of
/// `openssl req -x509`, which libpq accepts) is trusted by that exact match: webpki refuses it
/// (a CA certificate used as an end entity, often with only a CN and no subjectAltName), so
/// its validity period and, for `verify-full`, its names are checked here as libpq does.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
    check_host: bool,
}

fn bad_cert(e: rustls::CertificateError) -> rustls::Error {
    rustls::Error::InvalidCertificate(e)
}

impl Verifier {
    fn verify_pinned(
        &self,
        der: &[u8],
        server_name: &rustls::pki_types::ServerName<'_>,
        now: rustls::pki_types::UnixTime,
    ) -> Result<(), rustls::Error> {
        use x509_cert::der::Decode;
        use x509_cert::der::oid::AssociatedOid;
        use x509_cert::ext::pkix::SubjectAltName;
        use x509_cert::ext::pkix::name::GeneralName;
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|_| bad_cert(rustls::CertificateError::BadEncoding))?;
        let tbs = &cert.tbs_certificate;
        let now = Duration::from_secs(now.as_secs());
        if now < tbs.validity.not_before.to_unix_duration() {
            return Err(bad_cert(rustls::CertificateError::NotValidYet));
        }
        if now > tbs.validity.not_after.to_unix_duration() {
            return Err(bad_cert(rustls::CertificateError::Expired));
        }
        if !self.check_host {
            return Ok(());
        }
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for ext in tbs.extensions.iter().flatten() {
            if ext.extn_id == SubjectAltName::OID {
                let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
                    .map_err(|_| bad_cert(rustls::CertificateError::BadEncoding))?;
                for name in san.0 {
                    match name {
                        GeneralName::DnsName(n) => dns.push(n.to_string()),
                        GeneralName::IpAddress(ip) => ips.push(ip.as_bytes().to_vec()),
                        _ => {}
                    }
                }
            }
        }
        // libpq looks at the CN only when there is no DNS subjectAltName.
        if dns.is_empty() {
            for rdn in tbs.subject.0.iter() {
                for atv in rdn.0.iter() {
                    if atv.oid == x509_cert::der::oid::db::rfc4519::CN
                        && let Ok(cn) = std::str::from_utf8(atv.value.value())
                    {
                        dns.push(cn.to_string());
                    }
                }
            }
        }
        let matches = match server_name {
            rustls::pki_types::ServerName::DnsName(host) => {
                let host = host.as_ref().to_ascii_lowercase();
                dns.iter().any(|n| {
                    let n = n.to_ascii_lowercase();
                    match n.strip_prefix("*.") {
                        Some(suffix) => host
                            .split_once('.')
                            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
                        None => n == host,
                    }
                })
            }
            rustls::pki_types::ServerName::IpAddress(ip) => {
                let want: Vec<u8> = match std::net::IpAddr::from(*ip) {
                    std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                    std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                ips.contains(&want)
            }
            _ => false,
        };
        if matches {
            Ok(())
        } else {
            Err(bad_cert(rustls::CertificateError::NotValidForName))
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            self.verify_pinned(end_entity, server_name, now)?;
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_host => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// What a connection's URL says of TLS.
pub(super) struct TlsSettings<'a> {
    pub(super) sslmode: Option<&'a str>,
    /// libpq's `sslrootcert`: a PEM file, or `system` for the public web roots.
    pub(super) sslrootcert: Option<&'a str>,
    /// The variable of the URL (`DATABASE_URL`, `SOURCE_DATABASE_URL`): messages name it.
    pub(super) var: &'static str,
    /// The endpoint, without its password: messages name it.
    pub(super) describe: String,
}

impl TlsSettings<'_> {
    /// How much of the server's certificate to check, with libpq's semantics: `require` is
    /// encryption only, unless a root certificate is given (then it is `verify-ca`);
    /// `prefer`/`allow` check nothing (they would accept plain text anyway).
    pub(super) fn verification(&self) -> Verification {
        match self.sslmode {
            Some("verify-full") => Verification::ChainAndHost,
            Some("verify-ca") => Verification::Chain,
            Some("require") if self.sslrootcert.is_some() => Verification::Chain,
            _ => Verification::Nothing,
        }
    }

    /// The trust anchors, and the certificates of `sslrootcert` (see [`Verifier`]).
    #[allow(clippy::type_complexity)]
    pub(super) fn root_store(
        &self,
    ) -> Result<
        (
            rustls::RootCertStore,
            Vec<rustls::pki_types::CertificateDer<'static>>,
        ),
        PostgresError,
    > {
        let path = match self.sslrootcert {
            // libpq's default is ~/.postgresql/root.crt; a daemon has no meaningful home, and
            // a managed database's certificate chains to a public CA: use the web roots.
            None | Some("system") => {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                return Ok((roots, Vec::new()));
            }
            Some(p) => PathBuf::from(p),
        };
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let err = |detail: String| PostgresError::TlsRootCert {
            var: self.var,
            target: self.describe.clone(),
            path: path.clone(),
            detail,
        };
        let certs = CertificateDer::pem_file_iter(&path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("it holds no PEM certificate".to_string()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in &certs {
            roots.add(c.clone()).map_err(|e| err(e.to_string()))?;
        }
        Ok((roots, certs))
    }

    /// The rustls connector of these settings.
    pub(super) fn connector(&self) -> Result<MakeRustlsConnect, PostgresError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions");
        let config = match self.verification() {
            Verification::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
                .with_no_client_auth(),
            verification => {
                let (roots, pinned) = self.root_store()?;
                let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| PostgresError::TlsRootCert {
                    var: self.var,
                    target: self.describe.clone(),
                    path: PathBuf::from(self.sslrootcert.unwrap_or("system")),
                    detail: e.to_string(),
                })?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Verifier {
                        webpki,
                        pinned,
                        check_host: verification == Verification::ChainAndHost,
                    }))
                    .with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    pub(super) fn refused_hint(&self) -> String {
        let var = self.var;
        // Only a mode that insists on TLS gets refused: require, verify-ca or verify-full.
        let mode = self.sslmode.unwrap_or("require");
        format!(
            "; the server does not accept TLS but {var} says sslmode={mode}: enable ssl on the server, or set sslmode=prefer in {var} if plain text is acceptable on this network"
        )
    }

    pub(super) fn certificate_hint(&self) -> String {
        let var = self.var;
        match (self.verification(), self.sslrootcert.is_some()) {
            (Verification::ChainAndHost, false) => format!(
                "; the server's certificate is not signed by a public CA (or does not name the host): set sslrootcert=<PEM file of the server's CA> in {var}, or sslmode=require for encryption without verification"
            ),
            (Verification::ChainAndHost, true) => format!(
                "; the server's certificate is not signed by the CA in sslrootcert, or does not name the host of {var}: fix sslrootcert or the host in {var} (or use sslmode=verify-ca to skip the host name check)"
            ),
            (_, false) => format!(
                "; the server's certificate is not signed by a public CA: set sslrootcert=<PEM file of the server's CA> in {var}, or sslmode=require for encryption without verification"
            ),
            (_, true) => format!(
                "; the server's certificate is not signed by the CA in sslrootcert: fix sslrootcert in {var}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StepError;
    use crate::replica::url::PgEndpoint;

    fn parse(url: &str) -> Result<PgEndpoint, PostgresError> {
        PgEndpoint::parse_inner(url)
    }

    #[test]
    fn sslmodes_map_to_libpq_semantics() {
        let v = |url: &str| parse(url).unwrap().tls_settings().verification();
        assert!(v("postgres://u:p@h/d?sslmode=require") == Verification::Nothing);
        assert!(v("postgres://u:p@h/d?sslmode=require&sslrootcert=/ca.pem") == Verification::Chain);
        assert!(
            v("postgres://u:p@h/d?sslmode=verify-ca&sslrootcert=/ca.pem") == Verification::Chain
        );
        assert!(v("postgres://u:p@h/d?sslmode=verify-full") == Verification::ChainAndHost);
        let t =
            parse("postgres://u:p@h/d?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(t.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let e = parse("postgres://u:p@h/d?sslmode=verify-ca&sslrootcert=/nonexistent.pem")
            .unwrap()
            .tls_settings()
            .connector()
            .err()
            .unwrap();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        assert!(!StepError::from(e).is_transient());
    }
}
