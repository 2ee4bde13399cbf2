//! The edge's certificates: every certificate of a TLS listener, loaded with the config
//! (so a reload re-reads them, and one that fails to load fails the reload and leaves the
//! old ones serving), and picked per handshake by the client's SNI.
//!
//! Pingora's OpenSSL listener asks [`TlsAccept::certificate_callback`] for the certificate
//! during each handshake; the callback reads the current config snapshot, so a handshake
//! after a reload gets the new certificate while established connections carry on.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::nid::Nid;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::NameType;
use pingora::tls::x509::X509;

/// One certificate chain and its key, with the names it serves.
pub struct Certificate {
    /// DNS names of the subject alternative names (the common name when there are none),
    /// lowercased; `*.example.com` serves one label under `example.com`.
    pub names: Vec<String>,
    /// Leaf first, then the intermediates.
    chain: Vec<X509>,
    key: PKey<Private>,
    /// When the leaf expires, in seconds since the epoch.
    pub not_after: i64,
}

/// The certificates of one listener, in config order: the first serves clients whose SNI
/// matches none (or that send none).
pub struct Certificates(pub Vec<Certificate>);

impl fmt::Debug for Certificates {
    /// Names only: never a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|c| &c.names)).finish()
    }
}

impl Certificate {
    /// Reads a PEM chain and its PEM key; the error says what is wrong, without content.
    pub fn load(cert_file: &str, key_file: &str) -> Result<Self, (&'static str, String)> {
        let pem = std::fs::read(cert_file).map_err(|e| ("cert_file", format!("cannot read '{cert_file}': {e}")))?;
        let chain = X509::stack_from_pem(&pem)
            .map_err(|_| ("cert_file", format!("'{cert_file}' is not a PEM certificate chain")))?;
        let leaf = chain
            .first()
            .ok_or(("cert_file", format!("'{cert_file}' holds no certificate")))?;
        let key_pem = std::fs::read(key_file).map_err(|e| ("key_file", format!("cannot read '{key_file}': {e}")))?;
        let key = PKey::private_key_from_pem(&key_pem)
            .map_err(|_| ("key_file", format!("'{key_file}' is not a PEM private key")))?;
        let matches = leaf.public_key().is_ok_and(|p| p.public_eq(&key));
        if !matches {
            return Err(("key_file", format!("'{key_file}' is not the key of '{cert_file}'")));
        }
        let mut names: Vec<String> = leaf
            .subject_alt_names()
            .into_iter()
            .flatten()
            .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
            .collect();
        if names.is_empty() {
            names = leaf
                .subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase()))
                .collect();
        }
        let not_after = openssl::asn1::Asn1Time::from_unix(0)
            .and_then(|epoch| epoch.diff(leaf.not_after()))
            .map(|d| i64::from(d.days) * 86_400 + i64::from(d.secs))
            .map_err(|_| ("cert_file", format!("'{cert_file}' has no readable expiry")))?;
        Ok(Self {
            names,
            chain,
            key,
            not_after,
        })
    }

    fn serves(&self, host: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            // A wildcard covers exactly one label.
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => n == host,
        })
    }

    /// The name the expiry metric shows: the first name, or a placeholder.
    pub fn label(&self) -> &str {
        self.names.first().map_or("(unnamed)", String::as_str)
    }
}

impl Certificates {
    /// The certificate for a client's SNI: an exact name first, then a wildcard, else the
    /// first certificate.
    pub fn pick(&self, sni: Option<&str>) -> Option<&Certificate> {
        let host = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        host.as_deref()
            .and_then(|h| {
                let exact = self.0.iter().find(|c| c.names.iter().any(|n| n == h));
                exact.or_else(|| self.0.iter().find(|c| c.serves(h)))
            })
            .or(self.0.first())
    }
}

/// One identity of a client certificate, by type: what `api_keys[].client_cert` names
/// (`DNS:<name>`, `URI:<uri>`, `CN=<common name>`) and a verified certificate carries.
/// Types never match each other, so a DNS name whose text is `CN=billing` is not the
/// common name `billing`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertName {
    /// A DNS subject alternative name, lowercased (DNS names are case-insensitive).
    Dns(String),
    /// A URI subject alternative name (`spiffe://...`), exactly.
    Uri(String),
    /// A common name of the subject, exactly.
    Cn(String),
}

impl CertName {
    /// `DNS:<name>`, `URI:<uri>` or `CN=<common name>` (the type in any case).
    pub fn parse(s: &str) -> Result<Self, String> {
        let typed = |tag: &str| {
            s.get(..tag.len())
                .filter(|t| t.eq_ignore_ascii_case(tag))
                .map(|_| &s[tag.len()..])
        };
        let name = match (typed("DNS:"), typed("URI:"), typed("CN=")) {
            (Some(n), _, _) => CertName::Dns(n.to_ascii_lowercase()),
            (_, Some(n), _) => CertName::Uri(n.to_owned()),
            (_, _, Some(n)) => CertName::Cn(n.to_owned()),
            _ => return Err("must name the identity with its type: DNS:<name>, URI:<uri> or CN=<common name>".into()),
        };
        match &name {
            CertName::Dns(n) | CertName::Uri(n) | CertName::Cn(n) if n.is_empty() => {
                Err("names the type but no identity".into())
            }
            _ => Ok(name),
        }
    }
}

/// Which CA bundle verified a client certificate: a digest of the set of its CA
/// certificates, so two files with the same CAs are one bundle whatever their names, and
/// a bundle with one CA more or less is another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CaBundleId([u8; 32]);

impl CaBundleId {
    pub fn digest(&self) -> [u8; 32] {
        self.0
    }
}

/// The CAs of a `client_ca_file`, read when the config loads.
pub struct ClientCas {
    pub file: String,
    pub id: CaBundleId,
    pub certs: Vec<X509>,
}

impl fmt::Debug for ClientCas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCas")
            .field("file", &self.file)
            .field("certs", &self.certs.len())
            .finish()
    }
}

impl ClientCas {
    /// The PEM certificates of `file`; the error says what is wrong, without content.
    pub fn load(file: &str) -> Result<Self, String> {
        let pem = std::fs::read(file).map_err(|e| format!("cannot read '{file}': {e}"))?;
        let certs = X509::stack_from_pem(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .ok_or(format!("'{file}' holds no PEM certificate"))?;
        let mut digests = certs
            .iter()
            .map(|c| c.to_der().map(|der| *blake3::hash(&der).as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("'{file}' holds a certificate that cannot be encoded"))?;
        digests.sort_unstable();
        digests.dedup();
        let mut h = blake3::Hasher::new();
        for d in &digests {
            h.update(d);
        }
        Ok(Self {
            file: file.to_owned(),
            id: CaBundleId(*h.finalize().as_bytes()),
            certs,
        })
    }
}

/// A client certificate that verified against a listener's `client_ca_file`: its typed
/// identities (DNS and URI subject alternative names in their order, then common names)
/// and the bundle that verified it. Kept with the connection (Pingora's TLS digest) for
/// caller authentication; a resumed session gives the same, from the certificate the
/// session keeps.
#[derive(Debug)]
pub struct ClientIdentity {
    pub names: Vec<CertName>,
    pub ca: CaBundleId,
}

impl ClientIdentity {
    fn of(cert: &pingora::tls::x509::X509Ref, ca: CaBundleId) -> Self {
        let mut names: Vec<CertName> = cert
            .subject_alt_names()
            .into_iter()
            .flatten()
            .filter_map(|n| match (n.dnsname(), n.uri()) {
                (Some(dns), _) => Some(CertName::Dns(dns.to_ascii_lowercase())),
                (_, Some(uri)) => Some(CertName::Uri(uri.to_owned())),
                _ => None,
            })
            .collect();
        names.extend(
            cert.subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .filter_map(|e| e.data().to_string().ok())
                .map(CertName::Cn),
        );
        Self { names, ca }
    }
}

/// The certificates a listener serves now: read at each handshake, so a reload rotates
/// them; `None` when the current config no longer has the listener.
pub type CurrentCertificates = Box<dyn Fn() -> Option<Arc<Certificates>> + Send + Sync>;

/// Picks each handshake's certificate from what [`CurrentCertificates`] gives (the current
/// snapshot's listener of this address); `initial` serves when a reload dropped the
/// listener (listeners change only on restart).
pub struct CertPicker {
    pub current: CurrentCertificates,
    pub listen: String,
    pub initial: Arc<Certificates>,
    /// The bundle this listener verifies client certificates with, as read at start (the
    /// one OpenSSL holds); `None`: it asks for none.
    pub client_ca: Option<CaBundleId>,
}

#[async_trait]
impl TlsAccept for CertPicker {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let current = (self.current)();
        let certs = current.as_ref().unwrap_or(&self.initial);
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_owned);
        let Some(cert) = certs.pick(sni.as_deref()) else {
            return;
        };
        // A failure leaves the handshake without a certificate: the client sees it fail.
        let used = ext::ssl_use_certificate(ssl, &cert.chain[0])
            .and_then(|()| ext::ssl_use_private_key(ssl, &cert.key))
            .and_then(|()| cert.chain[1..].iter().try_for_each(|c| ext::ssl_add_chain_cert(ssl, c)));
        if used.is_err() {
            tracing::warn!(listen = %self.listen, "could not use the certificate for a handshake");
        }
    }

    /// A client certificate that verified (OpenSSL already refused one that did not)
    /// becomes the connection's [`ClientIdentity`].
    async fn handshake_complete_callback(&self, ssl: &TlsRef) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let ca = self.client_ca?;
        if ssl.verify_result() != pingora::tls::x509::X509VerifyResult::OK {
            return None;
        }
        let cert = ssl.peer_certificate()?;
        Some(Arc::new(ClientIdentity::of(&cert, ca)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cp, kp) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cp, c.pem()).unwrap();
        std::fs::write(&kp, key.serialize_pem()).unwrap();
        Certificate::load(cp.to_str().unwrap(), kp.to_str().unwrap()).unwrap()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let certs = Certificates(vec![
            cert(&["default.test"]),
            cert(&["*.example.test"]),
            cert(&["api.example.test"]),
        ]);
        let pick = |sni: Option<&str>| certs.pick(sni).unwrap().names[0].clone();
        assert_eq!(pick(Some("api.example.test")), "api.example.test");
        assert_eq!(pick(Some("API.Example.Test.")), "api.example.test");
        assert_eq!(pick(Some("www.example.test")), "*.example.test");
        // One label only, and not the parent itself.
        assert_eq!(pick(Some("a.b.example.test")), "default.test");
        assert_eq!(pick(Some("example.test")), "default.test");
        assert_eq!(pick(None), "default.test");
    }

    #[test]
    fn client_certificate_identities_are_typed() {
        assert_eq!(
            CertName::parse("DNS:Billing.Internal"),
            Ok(CertName::Dns("billing.internal".into()))
        );
        assert_eq!(CertName::parse("dns:a"), Ok(CertName::Dns("a".into())));
        assert_eq!(
            CertName::parse("URI:spiffe://corp/sa/Batch"),
            Ok(CertName::Uri("spiffe://corp/sa/Batch".into()))
        );
        assert_eq!(CertName::parse("CN=billing"), Ok(CertName::Cn("billing".into())));
        // A DNS name whose text looks like a common name is still a DNS name.
        assert_eq!(
            CertName::parse("DNS:CN=billing"),
            Ok(CertName::Dns("cn=billing".into()))
        );
        assert_ne!(CertName::parse("DNS:CN=billing"), CertName::parse("CN=billing"));
        for bad in ["billing.internal", "spiffe://x", "CN:billing", "DNS:", "CN=", "", "é"] {
            assert!(CertName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_and_expiry_is_read() {
        let a = cert(&["a.test"]);
        assert!(a.not_after > chrono::Utc::now().timestamp());
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (rcgen::KeyPair::generate().unwrap(), rcgen::KeyPair::generate().unwrap());
        let c = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .unwrap()
            .self_signed(&k1)
            .unwrap();
        std::fs::write(dir.path().join("c.pem"), c.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), k2.serialize_pem()).unwrap();
        let d = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
        let err = Certificate::load(&d("c.pem"), &d("k.pem")).err().unwrap();
        assert_eq!(err.0, "key_file");
        assert!(err.1.contains("is not the key of"), "{}", err.1);
        let secret = k2.serialize_pem();
        assert!(!err.1.contains(&secret[30..60]));
    }
}
