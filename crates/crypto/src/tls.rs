//! A provider's development certificate authority and the TLS identities it issues.
//!
//! Each provider has its own CA. Nodes get one certificate valid for both server and
//! client authentication (nodes talk to each other over mutual TLS); client profiles get
//! client certificates. A client certificate may name the organisation it acts for in a
//! URI subject alternative name `urn:sealpost:org:<HPI-O>` ([`client_org`] reads it back).
//! Everything is PEM on disk so operators can swap in their own PKI.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sealpost_core::ids::HpiO;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{Error, Result};

/// A certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// Paths of a TLS identity and the CA that verifies peers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A TLS identity and CA loaded from [`TlsPaths`].
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub identity: Identity,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn check_pem(path: &Path, text: &str, label: &str) -> Result<()> {
    if text.contains(&format!("-----BEGIN {label}")) {
        Ok(())
    } else {
        Err(Error::BadFile {
            path: path.to_path_buf(),
            problem: format!("no PEM block of type {label}"),
        })
    }
}

impl TlsPaths {
    pub fn load(&self) -> Result<TlsMaterial> {
        let ca_pem = read(&self.ca)?;
        check_pem(&self.ca, &ca_pem, "CERTIFICATE")?;
        let cert_pem = read(&self.cert)?;
        check_pem(&self.cert, &cert_pem, "CERTIFICATE")?;
        let key_pem = read(&self.key)?;
        check_pem(&self.key, &key_pem, "PRIVATE KEY")?;
        Ok(TlsMaterial {
            ca_pem,
            identity: Identity { cert_pem, key_pem },
        })
    }
}

/// A rustls server configuration (ring provider) that presents `material`'s identity and
/// requires every client to present a certificate issued by `material`'s CA: for listeners
/// outside tonic (MLLP over TLS).
pub fn mutual_tls_server_config(
    material: &TlsMaterial,
) -> Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |problem: String| Error::BadFile {
        path: std::path::PathBuf::from("<tls material>"),
        problem,
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(material.ca_pem.as_bytes()) {
        let c = c.map_err(|e| bad(format!("CA certificate: {e}")))?;
        roots
            .add(c)
            .map_err(|e| bad(format!("CA certificate: {e}")))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad(format!("client verifier: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(material.identity.cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(material.identity.key_pem.as_bytes())
        .map_err(|e| bad(format!("private key: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad(format!("certificate and key: {e}")))?;
    Ok(std::sync::Arc::new(config))
}

/// Writes a file, creating its folder; private keys get mode 0600. A private file is
/// created with that mode (and an existing one narrowed to it) before any byte is written,
/// so the secret is never readable by others, not even briefly.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if private {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        file.write_all(contents.as_bytes()).map_err(io)?;
    } else {
        std::fs::write(path, contents).map_err(io)?;
    }
    Ok(())
}

/// Prefix of the URI subject alternative name that names a client's organisation.
pub const ORG_URI_PREFIX: &str = "urn:sealpost:org:";

/// A provider's certificate authority.
pub struct DevCa {
    name: String,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn ca_params(name: &str) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{name} sealpost CA"));
    dn.push(DnType::OrganizationName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

impl DevCa {
    /// A new CA for the provider called `name`.
    pub fn generate(name: &str) -> Result<Self> {
        let key = KeyPair::generate()?;
        let cert = ca_params(name)?.self_signed(&key)?;
        Ok(Self {
            name: name.to_string(),
            key,
            cert_pem: cert.pem(),
        })
    }

    /// Loads a CA written by [`DevCa::save`].
    pub fn load(name: &str, cert: &Path, key: &Path) -> Result<Self> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let key = KeyPair::from_pem(&key_pem)?;
        Ok(Self {
            name: name.to_string(),
            key,
            cert_pem,
        })
    }

    pub fn save(&self, cert: &Path, key: &Path) -> Result<()> {
        write_file(cert, &self.cert_pem, false)?;
        write_file(key, &self.key.serialize_pem(), true)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issue(
        &self,
        common_name: &str,
        sans: &[String],
        org: Option<&HpiO>,
        server: bool,
    ) -> Result<Identity> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        for san in sans {
            p.subject_alt_names
                .push(match san.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(san.clone().try_into()?),
                });
        }
        if let Some(org) = org {
            p.subject_alt_names
                .push(SanType::URI(format!("{ORG_URI_PREFIX}{org}").try_into()?));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, self.name.as_str());
        p.distinguished_name = dn;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = KeyPair::generate()?;
        // The issuer is rebuilt from the CA's parameters: same subject, same key.
        let issuer = Issuer::new(ca_params(&self.name)?, &self.key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A node certificate, valid for serving and for connecting to peers. `hosts` are the
    /// DNS names and IP addresses peers and clients use to reach it.
    pub fn issue_node(&self, node_name: &str, hosts: &[String]) -> Result<Identity> {
        self.issue(node_name, hosts, None, true)
    }

    /// A client certificate for a CLI profile or an application, naming no organisation.
    pub fn issue_client(&self, client_name: &str) -> Result<Identity> {
        self.issue(client_name, &[], None, false)
    }

    /// A client certificate that, when `org` is given, names the organisation it acts for
    /// in a URI subject alternative name `urn:sealpost:org:<HPI-O>`.
    pub fn issue_client_for_org(&self, client_name: &str, org: Option<&HpiO>) -> Result<Identity> {
        self.issue(client_name, &[], org, false)
    }
}

/// The organisation a DER client certificate names in its `urn:sealpost:org:<HPI-O>` URI
/// subject alternative name, validated as an HPI-O. `None` when the certificate does not
/// parse, names no organisation, names an invalid HPI-O or names more than one.
///
/// This only reads the certificate: call it on a certificate whose chain TLS has already
/// verified against the provider's CA.
pub fn client_org(der: &[u8]) -> Option<HpiO> {
    let (rest, cert) = X509Certificate::from_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let san = cert.subject_alternative_name().ok()??;
    let mut found: Option<HpiO> = None;
    for name in &san.value.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(rest) = uri.strip_prefix(ORG_URI_PREFIX) else {
            continue;
        };
        let org = HpiO::parse(rest).ok()?;
        match &found {
            Some(prev) if prev != &org => return None,
            _ => found = Some(org),
        }
    }
    found
}

/// SHA-256 fingerprint of a DER certificate, hex encoded: how sealpost names a client
/// identity until certificate subjects are mapped to organisations.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        parsed.contents
    }

    /// A self-signed certificate with the given URI SANs, to reach the refusals.
    fn with_uris(uris: &[String]) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI(u.clone().try_into().expect("ia5")));
        }
        let key = KeyPair::generate().expect("key");
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn ambiguous_or_invalid_organisations_are_refused() {
        let a = HpiO::from_serial(1);
        let b = HpiO::from_serial(2);
        let uri = |o: &HpiO| format!("{ORG_URI_PREFIX}{o}");
        assert_eq!(client_org(&with_uris(&[uri(&a)])), Some(a.clone()));
        assert_eq!(
            client_org(&with_uris(&["https://example.org/x".into(), uri(&a)])),
            Some(a.clone())
        );
        assert_eq!(client_org(&with_uris(&[uri(&a), uri(&a)])), Some(a.clone()));
        assert_eq!(client_org(&with_uris(&[uri(&a), uri(&b)])), None);
        // A bad check digit, and a different prefix.
        let mut bad = a.as_str().to_string();
        let last = bad.pop().expect("digit");
        bad.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            client_org(&with_uris(&[format!("{ORG_URI_PREFIX}{bad}")])),
            None
        );
        assert_eq!(
            client_org(&with_uris(&[format!("urn:other:org:{a}")])),
            None
        );
    }

    #[test]
    fn client_certificates_name_their_organisation() {
        let ca = DevCa::generate("prov-a").expect("ca");
        let org = HpiO::from_serial(42);
        let with = ca
            .issue_client_for_org("clinic-app", Some(&org))
            .expect("issue");
        assert_eq!(client_org(&der(&with.cert_pem)), Some(org));
        let without = ca.issue_client_for_org("cli", None).expect("issue");
        assert_eq!(client_org(&der(&without.cert_pem)), None);
        let plain = ca.issue_client("cli").expect("issue");
        assert_eq!(client_org(&der(&plain.cert_pem)), None);
        let node = ca
            .issue_node("node-1", &["localhost".into()])
            .expect("issue");
        assert_eq!(client_org(&der(&node.cert_pem)), None);
        assert_eq!(client_org(b"not a certificate"), None);
        let mut trailing = der(&with.cert_pem);
        trailing.push(0);
        assert_eq!(client_org(&trailing), None);
    }

    #[test]
    fn ca_issues_and_round_trips_through_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::generate("prov-a").expect("ca");
        ca.save(&dir.path().join("ca.pem"), &dir.path().join("ca-key.pem"))
            .expect("save");
        let ca2 = DevCa::load(
            "prov-a",
            &dir.path().join("ca.pem"),
            &dir.path().join("ca-key.pem"),
        )
        .expect("load");
        let id = ca2
            .issue_node("node-1", &["localhost".into(), "127.0.0.1".into()])
            .expect("issue");
        assert!(id.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(id.key_pem.contains("PRIVATE KEY"));
        assert!(format!("{id:?}").find("PRIVATE").is_none());
        let key_mode = std::fs::metadata(dir.path().join("ca-key.pem"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("meta");
        assert_eq!(key_mode, 0o600);
    }
}
