//! A provider's development certificate authority and the TLS identities it issues.
//!
//! Each provider has its own CA. Nodes get one certificate valid for both server and
//! client authentication (nodes talk to each other over mutual TLS); client profiles get
//! client certificates. Everything is PEM on disk so operators can swap in their own PKI.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

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

/// Writes a file, creating its folder; private keys get mode 0600.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, contents).map_err(io)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

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

    fn issue(&self, common_name: &str, sans: &[String], server: bool) -> Result<Identity> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        for san in sans {
            p.subject_alt_names
                .push(match san.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(san.clone().try_into()?),
                });
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
        self.issue(node_name, hosts, true)
    }

    /// A client certificate for a CLI profile or an application.
    pub fn issue_client(&self, client_name: &str) -> Result<Identity> {
        self.issue(client_name, &[], false)
    }
}

/// SHA-256 fingerprint of a DER certificate, hex encoded: how sealpost names a client
/// identity until certificate subjects are mapped to organisations.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

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
