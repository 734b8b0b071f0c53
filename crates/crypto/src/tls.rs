//! A provider's development certificate authority and the TLS identities it issues.
//!
//! Each provider has its own CA. Nodes get one certificate valid for both server and
//! client authentication (nodes talk to each other over mutual TLS); client profiles get
//! client certificates. A client certificate may name the organisation it acts for in a
//! URI subject alternative name `urn:sealpost:org:<HPI-O>` ([`client_org`] reads it back);
//! the others name a role, `urn:sealpost:role:<operator|auditor|node>` ([`principal`] reads
//! whichever one a certificate names). The CA revokes by publishing a CRL
//! ([`DevCa::crl`]); [`ReloadingServerTls`] builds the servers' rustls configuration from
//! the CA bundle, the node's identity and the CRL, and builds it again when a file
//! changes, so certificates, trust bundles and revocations rotate without a restart.
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
    /// The certificate revocation list(s) of the CA, PEM; none means nothing is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
}

/// A TLS identity and CA loaded from [`TlsPaths`].
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub identity: Identity,
    /// PEM `X509 CRL` blocks, empty when nothing is revoked.
    pub crl_pem: String,
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
        let crl_pem = match &self.crl {
            Some(path) => {
                let text = read(path)?;
                check_pem(path, &text, "X509 CRL")?;
                text
            }
            None => String::new(),
        };
        Ok(TlsMaterial {
            ca_pem,
            identity: Identity { cert_pem, key_pem },
            crl_pem,
        })
    }
}

/// A rustls server configuration (ring provider) that presents `material`'s identity,
/// offers the ALPN protocols `alpn` (gRPC needs `h2`, MLLP none), and requires every
/// client to present a certificate issued by `material`'s CA, unexpired and not revoked by
/// its CRL.
pub fn server_config(
    material: &TlsMaterial,
    alpn: &[&[u8]],
) -> Result<std::sync::Arc<rustls::ServerConfig>> {
    server_config_with(material, alpn, ClientCerts::Required)
}

/// Whether a server asks its clients for certificates of the CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCerts {
    /// Every client presents one (the client and MLLP ports).
    Required,
    /// A client may present one, which is then checked, or none (the operations listener,
    /// which Prometheus and browsers reach with the CA only; the console has its tokens).
    Optional,
}

/// [`server_config`] with the given client certificate policy.
pub fn server_config_with(
    material: &TlsMaterial,
    alpn: &[&[u8]],
    client_certs: ClientCerts,
) -> Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
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
    let crls = CertificateRevocationListDer::pem_slice_iter(material.crl_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("CRL: {e}")))?;
    // Only the client's own certificate is checked against the CRLs (the chain is one CA
    // deep), and a certificate of a CA that published no CRL here is not refused for it.
    let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .with_crls(crls)
    .only_check_end_entity_revocation()
    .allow_unknown_revocation_status();
    if client_certs == ClientCerts::Optional {
        builder = builder.allow_unauthenticated();
    }
    let verifier = builder
        .build()
        .map_err(|e| bad(format!("client verifier: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(material.identity.cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(material.identity.key_pem.as_bytes())
        .map_err(|e| bad(format!("private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad(format!("certificate and key: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(std::sync::Arc::new(config))
}

/// What a file looked like when last read: its modification time and length.
type Stamp = Vec<Option<(std::time::SystemTime, u64)>>;

fn stamp(paths: &TlsPaths) -> Stamp {
    let mut files = vec![&paths.ca, &paths.cert, &paths.key];
    files.extend(paths.crl.as_ref());
    files
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// A server's TLS configuration built from files (CA bundle, identity, CRL) and built
/// again when one of them changes: each new connection gets the newest configuration,
/// connections already open keep theirs. A change that does not load (a half-written
/// file, a key that does not match) keeps the previous configuration and is reported.
pub struct ReloadingServerTls {
    paths: TlsPaths,
    alpn: Vec<Vec<u8>>,
    client_certs: ClientCerts,
    current: std::sync::RwLock<(std::sync::Arc<rustls::ServerConfig>, Stamp)>,
}

impl std::fmt::Debug for ReloadingServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingServerTls")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl ReloadingServerTls {
    /// Loads the files now; fails when they do not make a configuration.
    pub fn load(paths: TlsPaths, alpn: &[&[u8]]) -> Result<Self> {
        Self::load_with(paths, alpn, ClientCerts::Required)
    }

    /// [`Self::load`] with the given client certificate policy.
    pub fn load_with(paths: TlsPaths, alpn: &[&[u8]], client_certs: ClientCerts) -> Result<Self> {
        let before = stamp(&paths);
        let config = server_config_with(&paths.load()?, alpn, client_certs)?;
        Ok(Self {
            client_certs,
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            current: std::sync::RwLock::new((config, before)),
            paths,
        })
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> std::sync::Arc<rustls::ServerConfig> {
        match self.current.read() {
            Ok(g) => g.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Reads the files again if any changed since the last load: `Ok(true)` when a new
    /// configuration is in force, `Ok(false)` when nothing changed, an error (and the old
    /// configuration still in force) when the changed files do not load.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = stamp(&self.paths);
        let unchanged = match self.current.read() {
            Ok(g) => g.1 == now,
            Err(poisoned) => poisoned.into_inner().1 == now,
        };
        if unchanged {
            return Ok(false);
        }
        let alpn: Vec<&[u8]> = self.alpn.iter().map(|p| p.as_slice()).collect();
        let config = server_config_with(&self.paths.load()?, &alpn, self.client_certs);
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Even a failed load records the stamp, so one bad file is reported once, not on
        // every poll; the next change to any file is tried again.
        g.1 = now;
        g.0 = config?;
        Ok(true)
    }
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

    fn issue(&self, common_name: &str, sans: &[String], subject: Subject) -> Result<Identity> {
        self.issue_with(common_name, sans, subject, None)
    }

    /// Issues a certificate; `validity` overrides the default (from now, for rcgen's
    /// default span) with explicit not-before and not-after times.
    fn issue_with(
        &self,
        common_name: &str,
        sans: &[String],
        subject: Subject,
        validity: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
    ) -> Result<Identity> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        for san in sans {
            p.subject_alt_names
                .push(match san.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(san.clone().try_into()?),
                });
        }
        let uri = match &subject {
            Subject::Org(org) => format!("{ORG_URI_PREFIX}{org}"),
            Subject::Role(role) => format!("{ROLE_URI_PREFIX}{}", role.as_str()),
        };
        p.subject_alt_names.push(SanType::URI(uri.try_into()?));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, self.name.as_str());
        p.distinguished_name = dn;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if subject == Subject::Role(Role::Node) {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if let Some((from, until)) = validity {
            p.not_before = from;
            p.not_after = until;
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

    /// A node certificate, valid for serving and for connecting to peers; it names the
    /// role `node`. `hosts` are the DNS names and IP addresses peers and clients use to
    /// reach it.
    pub fn issue_node(&self, node_name: &str, hosts: &[String]) -> Result<Identity> {
        self.issue(node_name, hosts, Subject::Role(Role::Node))
    }

    /// A client certificate for a person or program acting in `role` (an operator or an
    /// auditor; [`DevCa::issue_node`] issues node certificates).
    pub fn issue_role(&self, client_name: &str, role: Role) -> Result<Identity> {
        self.issue(client_name, &[], Subject::Role(role))
    }

    /// A client certificate that acts for the organisation `org`, named in a URI subject
    /// alternative name `urn:sealpost:org:<HPI-O>`.
    pub fn issue_for_org(&self, client_name: &str, org: &HpiO) -> Result<Identity> {
        self.issue(client_name, &[], Subject::Org(org.clone()))
    }

    /// A certificate for `subject` valid only between `not_before` and `not_after`
    /// (expired and not-yet-valid certificates, for the refusal tests and drills).
    pub fn issue_valid_between(
        &self,
        client_name: &str,
        subject: Subject,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> Result<Identity> {
        self.issue_with(
            client_name,
            &[],
            subject,
            Some((not_before.into(), not_after.into())),
        )
    }

    /// A certificate for `subject` whose public key comes from a PKCS#10 request (PEM):
    /// onboarding, where the organisation keeps its private key. The request's own
    /// subject and extensions are ignored: the CA sets the name and the identity.
    pub fn sign_csr(&self, client_name: &str, subject: Subject, csr_pem: &str) -> Result<String> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let uri = match &subject {
            Subject::Org(org) => format!("{ORG_URI_PREFIX}{org}"),
            Subject::Role(role) => format!("{ROLE_URI_PREFIX}{}", role.as_str()),
        };
        p.subject_alt_names.push(SanType::URI(uri.try_into()?));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, client_name);
        dn.push(DnType::OrganizationName, self.name.as_str());
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = Issuer::new(ca_params(&self.name)?, &self.key);
        Ok(p.signed_by(&csr.public_key, &issuer)?.pem())
    }

    /// A CRL signed by this CA revoking the certificates with the given serial numbers
    /// (big-endian bytes, as [`serial_of`] reads them), valid for `valid_for`; `number`
    /// is the CRL number, which must grow with each CRL the CA publishes.
    pub fn crl(
        &self,
        revoked: &[Vec<u8>],
        number: u64,
        valid_for: std::time::Duration,
    ) -> Result<String> {
        let now = time::OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + valid_for,
            crl_number: rcgen::SerialNumber::from(number.to_be_bytes().to_vec()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(serial.clone()),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let issuer = Issuer::new(ca_params(&self.name)?, &self.key);
        Ok(params.signed_by(&issuer)?.pem()?)
    }
}

/// A CA's CRL file, beside its certificate.
pub const CRL_FILE: &str = "ca.crl";
/// The serial numbers (hex, one a line) a CA has revoked, beside its certificate.
pub const REVOKED_FILE: &str = "revoked";
/// How long a CRL the CA writes claims to be current.
pub const CRL_VALID_FOR: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

impl DevCa {
    /// The CA's CRL in `dir` (`ca.crl`), written empty when missing; its path.
    pub fn ensure_crl(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(CRL_FILE);
        if !path.exists() {
            write_file(&path, &self.crl(&[], 1, CRL_VALID_FOR)?, false)?;
        }
        Ok(path)
    }

    /// Revokes the PEM certificate `cert_pem`: its serial joins `dir/revoked` and a new
    /// CRL naming every revoked serial replaces `dir/ca.crl` (written whole, then renamed,
    /// so a node never reads half of one). Nodes refuse the certificate from their next
    /// TLS reload on. Revoking twice is harmless.
    pub fn revoke_in(&self, dir: &Path, cert_pem: &str) -> Result<()> {
        let serial = hex::encode(serial_of(cert_pem)?);
        let list = dir.join(REVOKED_FILE);
        let mut serials: Vec<String> = match std::fs::read_to_string(&list) {
            Ok(t) => t
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(Error::Io { path: list, source }),
        };
        if !serials.contains(&serial) {
            serials.push(serial);
        }
        let bytes = serials
            .iter()
            .map(|s| {
                hex::decode(s).map_err(|e| Error::BadFile {
                    path: list.clone(),
                    problem: format!("{s:?} is not a hex serial number: {e}"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        write_file(&list, &(serials.join("\n") + "\n"), false)?;
        // Each CRL gets a larger number than the last: one more than the serials listed.
        let crl = self.crl(&bytes, serials.len() as u64 + 1, CRL_VALID_FOR)?;
        let path = dir.join(CRL_FILE);
        let tmp = dir.join(format!("{CRL_FILE}.new"));
        write_file(&tmp, &crl, false)?;
        std::fs::rename(&tmp, &path).map_err(|source| Error::Io { path, source })
    }
}

/// The serial number of a PEM certificate, big-endian bytes: what a CRL names.
pub fn serial_of(cert_pem: &str) -> Result<Vec<u8>> {
    let bad = |problem: String| Error::BadFile {
        path: PathBuf::from("<certificate>"),
        problem,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    Ok(cert.raw_serial().to_vec())
}

/// Prefix of the URI subject alternative name that names a client's role.
pub const ROLE_URI_PREFIX: &str = "urn:sealpost:role:";

/// The roles a certificate can name instead of an organisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Administers the cluster and the directory; never reads payloads.
    Operator,
    /// Replays, searches and verifies the audit trail; never reads payloads.
    Auditor,
    /// A node of this provider: the Raft service.
    Node,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Node => "node",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "operator" => Ok(Role::Operator),
            "auditor" => Ok(Role::Auditor),
            "node" => Ok(Role::Node),
            other => Err(format!(
                "unknown role {other:?}: expected operator, auditor or node"
            )),
        }
    }
}

/// Who a certificate says its holder is: an organisation or a role, exactly one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Org(HpiO),
    Role(Role),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Org(org) => write!(f, "organisation {org}"),
            Subject::Role(role) => write!(f, "{}", role.as_str()),
        }
    }
}

/// The subject a DER certificate names: one `urn:sealpost:org:<HPI-O>` or one
/// `urn:sealpost:role:<role>` URI subject alternative name (repeats of the same one are
/// allowed). `None` when the certificate does not parse, names neither, names both, names
/// two different ones, or names an invalid HPI-O or an unknown role: such a certificate
/// may do nothing.
///
/// This only reads the certificate: call it on a certificate whose chain TLS has already
/// verified against the provider's CA.
pub fn principal(der: &[u8]) -> Option<Subject> {
    let (rest, cert) = X509Certificate::from_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let san = cert.subject_alternative_name().ok()??;
    let mut found: Option<Subject> = None;
    for name in &san.value.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let subject = if let Some(rest) = uri.strip_prefix(ORG_URI_PREFIX) {
            Subject::Org(HpiO::parse(rest).ok()?)
        } else if let Some(rest) = uri.strip_prefix(ROLE_URI_PREFIX) {
            Subject::Role(rest.parse().ok()?)
        } else {
            continue;
        };
        match &found {
            Some(prev) if prev != &subject => return None,
            _ => found = Some(subject),
        }
    }
    found
}

/// The organisation a DER client certificate acts for ([`principal`] when it names one).
pub fn client_org(der: &[u8]) -> Option<HpiO> {
    match principal(der)? {
        Subject::Org(org) => Some(org),
        Subject::Role(_) => None,
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
    fn a_certificate_names_one_organisation_or_one_role() {
        let ca = DevCa::generate("prov-a").expect("ca");
        let org = HpiO::from_serial(42);
        let with = ca.issue_for_org("clinic-app", &org).expect("issue");
        assert_eq!(client_org(&der(&with.cert_pem)), Some(org.clone()));
        assert_eq!(
            principal(&der(&with.cert_pem)),
            Some(Subject::Org(org.clone()))
        );
        for role in [Role::Operator, Role::Auditor] {
            let id = ca.issue_role("cli", role).expect("issue");
            assert_eq!(principal(&der(&id.cert_pem)), Some(Subject::Role(role)));
            assert_eq!(client_org(&der(&id.cert_pem)), None);
        }
        let node = ca
            .issue_node("node-1", &["localhost".into()])
            .expect("issue");
        assert_eq!(
            principal(&der(&node.cert_pem)),
            Some(Subject::Role(Role::Node))
        );
        // Both an organisation and a role, two roles, an unknown role, or nothing: nobody.
        let role = |r: &str| format!("{ROLE_URI_PREFIX}{r}");
        let org_uri = format!("{ORG_URI_PREFIX}{org}");
        assert_eq!(principal(&with_uris(&[org_uri, role("operator")])), None);
        assert_eq!(
            principal(&with_uris(&[role("auditor"), role("operator")])),
            None
        );
        assert_eq!(principal(&with_uris(&[role("superuser")])), None);
        assert_eq!(principal(&with_uris(&[])), None);
        assert_eq!(principal(b"not a certificate"), None);
        let mut trailing = der(&with.cert_pem);
        trailing.push(0);
        assert_eq!(principal(&trailing), None);
    }

    #[test]
    fn a_csr_is_signed_for_the_identity_the_ca_chooses() {
        let ca = DevCa::generate("prov-a").expect("ca");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        // The request asks to be an operator; the CA makes it an organisation.
        params.subject_alt_names.push(SanType::URI(
            format!("{ROLE_URI_PREFIX}operator")
                .try_into()
                .expect("ia5"),
        ));
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let org = HpiO::from_serial(7);
        let cert = ca
            .sign_csr("clinic", Subject::Org(org.clone()), &csr)
            .expect("signed");
        assert_eq!(principal(&der(&cert)), Some(Subject::Org(org)));
        assert!(
            ca.sign_csr("x", Subject::Role(Role::Auditor), "junk")
                .is_err()
        );
    }

    #[test]
    fn a_changed_crl_is_picked_up_and_a_bad_one_keeps_the_old_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::generate("prov-a").expect("ca");
        let node = ca.issue_node("n1", &["127.0.0.1".into()]).expect("node");
        let paths = TlsPaths {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("n1.pem"),
            key: dir.path().join("n1-key.pem"),
            crl: Some(dir.path().join("ca.crl")),
        };
        write_file(&paths.ca, ca.cert_pem(), false).expect("ca");
        write_file(&paths.cert, &node.cert_pem, false).expect("cert");
        write_file(&paths.key, &node.key_pem, true).expect("key");
        let day = std::time::Duration::from_secs(86_400);
        write_file(
            paths.crl.as_ref().expect("crl"),
            &ca.crl(&[], 1, day).expect("crl"),
            false,
        )
        .expect("write");
        let tls = ReloadingServerTls::load(paths.clone(), &[b"h2"]).expect("load");
        assert_eq!(tls.current().alpn_protocols, vec![b"h2".to_vec()]);
        assert!(!tls.reload_if_changed().expect("nothing changed"));
        let first = tls.current();
        let client = ca
            .issue_for_org("c", &HpiO::from_serial(1))
            .expect("client");
        let revoked = ca
            .crl(&[serial_of(&client.cert_pem).expect("serial")], 2, day)
            .expect("crl");
        // A longer file, so the change is seen even within the clock's resolution.
        write_file(
            paths.crl.as_ref().expect("crl"),
            &format!("{revoked}\n"),
            false,
        )
        .expect("write");
        assert!(tls.reload_if_changed().expect("reloaded"));
        assert!(!std::sync::Arc::ptr_eq(&first, &tls.current()));
        let second = tls.current();
        write_file(&paths.key, "-----BEGIN PRIVATE KEY-----\ngarbage\n", true).expect("write");
        assert!(tls.reload_if_changed().is_err());
        assert!(std::sync::Arc::ptr_eq(&second, &tls.current()));
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
