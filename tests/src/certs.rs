//! Test PKI generated at run time (never committed): a CA and a server leaf signed by it, for
//! the gateway's in-process TLS tests.
//!
//! The leaf is what a real deployment would use: `CA:FALSE` (explicit basic constraints),
//! `serverAuth`, SAN `localhost` and `127.0.0.1`, so a client trusting only the CA can verify
//! it by IP or name. A second, unrelated key lets tests build a mismatched cert/key pair.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// PEM texts of a CA and a server leaf it signed.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_cert_pem: String,
    pub leaf_cert_pem: String,
    pub leaf_key_pem: String,
    /// A private key unrelated to the leaf (for mismatch tests).
    pub other_key_pem: String,
}

/// Paths of a [`TestPki`] written to a directory.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    pub ca_cert: PathBuf,
    pub leaf_cert: PathBuf,
    pub leaf_key: PathBuf,
    pub other_key: PathBuf,
}

impl TestPki {
    /// Generate a fresh CA and leaf.
    ///
    /// # Errors
    /// Key generation or signing failures.
    pub fn generate() -> anyhow::Result<TestPki> {
        let ca_key = KeyPair::generate().context("CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "metis gateway test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("CA certificate")?;

        let leaf_key = KeyPair::generate().context("leaf key")?;
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .context("leaf params")?;
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.distinguished_name
            .push(DnType::CommonName, "metis gateway test server");
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &ca).context("leaf certificate")?;
        let other = KeyPair::generate().context("unrelated key")?;
        Ok(TestPki {
            ca_cert_pem: ca.pem(),
            leaf_cert_pem: leaf_cert.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
            other_key_pem: other.serialize_pem(),
        })
    }

    /// Write the PEM files into `dir` (`ca.pem`, `cert.pem`, `key.pem`, `other-key.pem`).
    ///
    /// # Errors
    /// Write failures.
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<PkiFiles> {
        let files = PkiFiles {
            ca_cert: dir.join("ca.pem"),
            leaf_cert: dir.join("cert.pem"),
            leaf_key: dir.join("key.pem"),
            other_key: dir.join("other-key.pem"),
        };
        for (path, text) in [
            (&files.ca_cert, &self.ca_cert_pem),
            (&files.leaf_cert, &self.leaf_cert_pem),
            (&files.leaf_key, &self.leaf_key_pem),
            (&files.other_key, &self.other_key_pem),
        ] {
            std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(files)
    }
}
