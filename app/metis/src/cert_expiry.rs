//! When the in-process TLS certificate expires, for `/metrics`
//! (`metis_tls_certificate_expiry_timestamp_seconds`) and the certificate-expiry alert.
//!
//! The gateway reads `--tls-cert` once at start, so a renewed certificate only takes effect
//! after a restart: the alert is what tells an SRE that cert-manager renewed the Secret but
//! the pods still serve the old one. Only `notAfter` of the first (leaf) certificate is
//! needed, so this walks the DER structure directly instead of pulling in an X.509 library:
//! `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
//! serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, … } … }`.

use anyhow::Context as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::Path;

/// One DER element: (tag, contents, rest of the input).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

/// `UTCTime` (`YYMMDDHHMMSSZ`, years 1950–2049 per RFC 5280) or `GeneralizedTime`
/// (`YYYYMMDDHHMMSSZ`) as unix seconds.
fn asn1_time(tag: u8, contents: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(contents).ok()?;
    let digits = text.strip_suffix('Z')?;
    let full = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: u32 = digits.get(..2)?.parse().ok()?;
            let century = if yy >= 50 { "19" } else { "20" };
            format!("{century}{digits}")
        }
        (0x18, 14) => digits.to_owned(),
        _ => return None,
    };
    if !full.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        full.get(0..4)?,
        full.get(4..6)?,
        full.get(6..8)?,
        full.get(8..10)?,
        full.get(10..12)?,
        full.get(12..14)?
    );
    metis_domain::time::parse_iso(&iso)
        .ok()
        .map(|us| us.div_euclid(1_000_000))
}

/// `notAfter` of a DER certificate, as unix seconds.
#[must_use]
pub fn not_after(der: &[u8]) -> Option<i64> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert, _) = tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // Optional explicit [0] version.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (tag, validity, _) = tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_not_before)?;
    asn1_time(tag, time)
}

/// `notAfter` of the first certificate in a PEM file.
///
/// # Errors
/// The file cannot be read, holds no certificate, or its validity cannot be parsed — each
/// message names the file.
pub fn of_pem_file(path: &Path) -> anyhow::Result<i64> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let first = CertificateDer::pem_slice_iter(&pem)
        .next()
        .with_context(|| format!("{} contains no certificate", path.display()))?
        .map_err(|e| anyhow::anyhow!("{} is not valid PEM: {e}", path.display()))?;
    not_after(first.as_ref()).with_context(|| {
        format!(
            "cannot read the validity (notAfter) of the certificate in {}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = contents.len();
        if n < 0x80 {
            out.push(u8::try_from(n).unwrap());
        } else {
            out.push(0x82);
            out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
        out.extend_from_slice(contents);
        out
    }

    /// A structurally complete certificate whose validity holds the given times.
    fn cert(not_before: (u8, &str), not_after: (u8, &str), version: bool) -> Vec<u8> {
        let mut tbs = Vec::new();
        if version {
            tbs.extend(der(0xa0, &der(0x02, &[2])));
        }
        tbs.extend(der(0x02, &[0x01, 0x23]));
        tbs.extend(der(0x30, &der(0x06, &[0x2a, 0x86, 0x48])));
        // An issuer long enough to need the long length form.
        tbs.extend(der(0x30, &[0x31; 200]));
        let mut validity = der(not_before.0, not_before.1.as_bytes());
        validity.extend(der(not_after.0, not_after.1.as_bytes()));
        tbs.extend(der(0x30, &validity));
        tbs.extend(der(0x30, &[]));
        let mut body = der(0x30, &tbs);
        body.extend(der(0x30, &der(0x06, &[0x2a])));
        body.extend(der(0x03, &[0x00]));
        der(0x30, &body)
    }

    #[test]
    fn not_after_reads_utc_and_generalized_times() {
        let c = cert((0x17, "250101000000Z"), (0x17, "270615123000Z"), true);
        assert_eq!(not_after(&c), Some(1_813_062_600)); // 2027-06-15T12:30:00Z
        let c = cert((0x17, "491231235959Z"), (0x18, "40960101000000Z"), false);
        assert_eq!(not_after(&c), Some(67_090_118_400)); // 4096-01-01T00:00:00Z
        // UTCTime years 50–99 are 19xx.
        let c = cert((0x17, "500101000000Z"), (0x17, "990101000000Z"), true);
        assert_eq!(not_after(&c), Some(915_148_800));
    }

    #[test]
    fn malformed_certificates_give_none_not_a_panic() {
        let good = cert((0x17, "250101000000Z"), (0x17, "270615123000Z"), true);
        for cut in 0..good.len() {
            assert_eq!(not_after(&good[..cut]), None, "truncated at {cut}");
        }
        assert_eq!(not_after(b"not der at all"), None);
        let bad_time = cert((0x17, "250101000000Z"), (0x17, "27061512300Z"), true);
        assert_eq!(not_after(&bad_time), None);
        let local_time = cert((0x17, "250101000000Z"), (0x18, "20270615123000"), true);
        assert_eq!(not_after(&local_time), None);
    }
}
