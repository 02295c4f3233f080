//! JSON Web Tokens: parsing, the signature check against a JWKS key, and the claim checks
//! (`iss`, `aud`, `exp`, `nbf`). Only RS256 and ES256 are accepted: `none` and the HMAC
//! algorithms (whose "key" would be public JWKS material) are refused by name.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use metis_ports::identity::AuthRefusal;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

/// Clock skew tolerated on `exp` and `nbf` (seconds), so an issuer whose clock runs a little
/// ahead or behind does not lock admins out.
pub const LEEWAY_SECS: i64 = 60;

/// The signature algorithms this gateway accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
}

/// A public key from the issuer's JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyKey {
    /// RSA modulus and exponent (big-endian).
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An uncompressed P-256 point (`0x04 || x || y`).
    P256 { point: Vec<u8> },
}

impl VerifyKey {
    fn alg(&self) -> Alg {
        match self {
            VerifyKey::Rsa { .. } => Alg::Rs256,
            VerifyKey::P256 { .. } => Alg::Es256,
        }
    }
}

#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

/// The usable signing keys of a JWKS document, by `kid` (keys without a `kid` are kept under
/// the empty string). Keys of other types, curves or uses (`enc`) are skipped, not errors:
/// issuers publish keys this gateway has no use for.
///
/// # Errors
/// The document is not a JWKS (`{"keys": [...]}`).
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, VerifyKey>, String> {
    let raw: RawJwks =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not a key set: {e}"))?;
    let mut keys = HashMap::new();
    for value in raw.keys {
        let Ok(jwk) = serde_json::from_value::<RawJwk>(value) else {
            continue;
        };
        if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let b64 = |v: &Option<String>| v.as_deref().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok());
        let key = match (jwk.kty.as_deref(), jwk.crv.as_deref()) {
            (Some("RSA"), _) => match (b64(&jwk.n), b64(&jwk.e)) {
                (Some(n), Some(e)) => VerifyKey::Rsa { n, e },
                _ => continue,
            },
            (Some("EC"), Some("P-256")) => match (b64(&jwk.x), b64(&jwk.y)) {
                (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                    let mut point = Vec::with_capacity(65);
                    point.push(4);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    VerifyKey::P256 { point }
                }
                _ => continue,
            },
            _ => continue,
        };
        keys.insert(jwk.kid.unwrap_or_default(), key);
    }
    Ok(keys)
}

/// A token split and decoded, not yet trusted.
#[derive(Debug)]
pub struct Unverified {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Value,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

fn malformed(what: &str) -> AuthRefusal {
    AuthRefusal::unauthenticated(
        "malformed_token",
        format!("the bearer token is not a valid JWT ({what})"),
    )
}

/// Whether a bearer credential has the shape of a JWT (three base64url parts), so the admin
/// auth can tell a JWT from a static token without trying both.
#[must_use]
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_some() && parts.next().is_none()
}

/// Split a compact JWS and check its header's algorithm.
///
/// # Errors
/// `malformed_token`, or `unsupported_alg` naming the algorithm (`none`, `HS256`, …).
pub fn decode(token: &str) -> Result<Unverified, AuthRefusal> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("it must have three dot-separated parts"));
    };
    let header: Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| malformed("its header is not base64url JSON"))?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Alg::Rs256,
        Some("ES256") => Alg::Es256,
        Some(other) => {
            return Err(AuthRefusal::unauthenticated(
                "unsupported_alg",
                format!(
                    "the token's algorithm '{other}' is refused; only RS256 and ES256 are accepted"
                ),
            ));
        }
        None => return Err(malformed("its header has no alg")),
    };
    let claims: Value = URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .ok_or_else(|| malformed("its claims are not a base64url JSON object"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| malformed("its signature is not base64url"))?;
    Ok(Unverified {
        alg,
        kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
        claims,
        signing_input: format!("{h}.{c}").into_bytes(),
        signature,
    })
}

impl Unverified {
    /// Check the signature with `key`.
    ///
    /// # Errors
    /// `bad_signature`, or `unsupported_alg` when the key's type does not match the header.
    pub fn verify_signature(&self, key: &VerifyKey) -> Result<(), AuthRefusal> {
        if key.alg() != self.alg {
            return Err(AuthRefusal::unauthenticated(
                "unsupported_alg",
                format!(
                    "the token says {:?} but its key '{}' is for {:?}",
                    self.alg,
                    self.kid.as_deref().unwrap_or(""),
                    key.alg()
                ),
            ));
        }
        let ok = match key {
            VerifyKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(
                    &RSA_PKCS1_2048_8192_SHA256,
                    &self.signing_input,
                    &self.signature,
                )
                .is_ok(),
            VerifyKey::P256 { point } => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(&self.signing_input, &self.signature)
                .is_ok(),
        };
        if ok {
            Ok(())
        } else {
            Err(AuthRefusal::unauthenticated(
                "bad_signature",
                "bad signature: the token was not signed by the issuer's key it names",
            ))
        }
    }
}

/// What the claims must satisfy.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    /// Accepted audiences: the token's `aud` must contain one of them.
    pub audiences: &'a [String],
    /// Unix seconds now.
    pub now: i64,
    /// For id_tokens of a browser login: the nonce the login sent.
    pub nonce: Option<&'a str>,
}

fn time_claim(claims: &Value, name: &str) -> Result<Option<i64>, AuthRefusal> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| malformed(&format!("'{name}' is not a number"))),
    }
}

/// Check `iss`, `aud`, `exp`, `nbf` (and `nonce` when expected).
///
/// # Errors
/// `wrong_issuer`, `wrong_audience`, `token_expired`, `token_not_yet_valid`, `missing_claim`,
/// `nonce_mismatch`; each message names the values involved (never the signature).
pub fn check_claims(claims: &Value, expect: &Expect<'_>) -> Result<(), AuthRefusal> {
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    if iss != expect.issuer {
        return Err(AuthRefusal::unauthenticated(
            "wrong_issuer",
            format!(
                "wrong issuer: the token is from '{iss}', this gateway trusts '{}'",
                expect.issuer
            ),
        ));
    }
    let auds: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !auds.iter().any(|a| expect.audiences.iter().any(|e| e == a)) {
        return Err(AuthRefusal::unauthenticated(
            "wrong_audience",
            format!(
                "wrong audience: the token is for {auds:?}, this gateway expects {:?}",
                expect.audiences
            ),
        ));
    }
    let Some(exp) = time_claim(claims, "exp")? else {
        return Err(AuthRefusal::unauthenticated(
            "missing_claim",
            "the token has no 'exp' claim; tokens without an expiry are refused",
        ));
    };
    if expect.now > exp.saturating_add(LEEWAY_SECS) {
        return Err(AuthRefusal::unauthenticated(
            "token_expired",
            format!(
                "token expired {} s ago (exp={exp}, {LEEWAY_SECS} s leeway)",
                expect.now - exp
            ),
        ));
    }
    if let Some(nbf) = time_claim(claims, "nbf")?
        && expect.now.saturating_add(LEEWAY_SECS) < nbf
    {
        return Err(AuthRefusal::unauthenticated(
            "token_not_yet_valid",
            format!(
                "token not valid yet: nbf={nbf} is {} s ahead ({LEEWAY_SECS} s leeway)",
                nbf - expect.now
            ),
        ));
    }
    if let Some(nonce) = expect.nonce
        && claims.get("nonce").and_then(Value::as_str) != Some(nonce)
    {
        return Err(AuthRefusal::unauthenticated(
            "nonce_mismatch",
            "the id_token's nonce does not match this login (replayed or foreign token)",
        ));
    }
    if claims
        .get("sub")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(AuthRefusal::unauthenticated(
            "missing_claim",
            "the token has no 'sub' claim",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};

    fn b64(v: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn es256(key: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }

    fn p256_key(key: &EcdsaKeyPair) -> VerifyKey {
        VerifyKey::P256 {
            point: key.public_key().as_ref().to_vec(),
        }
    }

    fn expect(now: i64) -> (Vec<String>, i64) {
        (vec!["metis".to_owned()], now)
    }

    #[test]
    fn an_es256_token_verifies_and_a_tampered_one_does_not() {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let claims =
            serde_json::json!({"iss": "https://i", "aud": "metis", "sub": "u", "exp": 2000});
        let token = es256(
            &key,
            &serde_json::json!({"alg": "ES256", "kid": "k"}),
            &claims,
        );
        assert!(looks_like_jwt(&token));
        let t = decode(&token).unwrap();
        assert_eq!(t.kid.as_deref(), Some("k"));
        t.verify_signature(&p256_key(&key)).unwrap();
        let (auds, now) = expect(1000);
        let e = Expect {
            issuer: "https://i",
            audiences: &auds,
            now,
            nonce: None,
        };
        check_claims(&t.claims, &e).unwrap();
        // Another key: bad signature.
        let other = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let err = t.verify_signature(&p256_key(&other)).unwrap_err();
        assert_eq!(err.code(), "bad_signature");
        // Claims swapped under the same signature: bad signature.
        let forged =
            serde_json::json!({"iss": "https://i", "aud": "metis", "sub": "admin", "exp": 2000});
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = b64(forged.to_string().as_bytes());
        let t = decode(&parts.join(".")).unwrap();
        assert_eq!(
            t.verify_signature(&p256_key(&key)).unwrap_err().code(),
            "bad_signature"
        );
    }

    #[test]
    fn none_and_hmac_are_refused_by_name() {
        for alg in ["none", "HS256", "RS512"] {
            let h = b64(serde_json::json!({"alg": alg}).to_string().as_bytes());
            let c = b64(b"{}");
            let err = decode(&format!("{h}.{c}.")).unwrap_err();
            assert_eq!(err.code(), "unsupported_alg");
            assert!(err.to_string().contains(alg), "{err}");
        }
        assert_eq!(decode("a.b").unwrap_err().code(), "malformed_token");
        assert!(!looks_like_jwt("mt_admin_static_token_123"));
    }

    #[test]
    fn claim_checks_name_the_problem() {
        let (auds, _) = expect(0);
        let check = |claims: Value, now: i64, nonce: Option<&str>| {
            check_claims(
                &claims,
                &Expect {
                    issuer: "https://i",
                    audiences: &auds,
                    now,
                    nonce,
                },
            )
            .map_err(|e| e.code())
        };
        let base = |aud: Value, exp: i64| serde_json::json!({"iss": "https://i", "aud": aud, "sub": "u", "exp": exp, "nonce": "n1"});
        assert_eq!(check(base("metis".into(), 1000), 1060, None), Ok(()));
        assert_eq!(
            check(base("metis".into(), 1000), 1061, None),
            Err("token_expired")
        );
        assert_eq!(
            check(base(serde_json::json!(["x", "metis"]), 1000), 0, None),
            Ok(())
        );
        assert_eq!(
            check(base("other".into(), 1000), 0, None),
            Err("wrong_audience")
        );
        assert_eq!(
            check(base(serde_json::json!([]), 1000), 0, None),
            Err("wrong_audience")
        );
        let mut c = base("metis".into(), 1000);
        c["iss"] = "https://evil".into();
        assert_eq!(check(c, 0, None), Err("wrong_issuer"));
        let mut c = base("metis".into(), 5000);
        c["nbf"] = 200.into();
        assert_eq!(check(c.clone(), 140, None), Ok(()));
        assert_eq!(check(c, 139, None), Err("token_not_yet_valid"));
        let mut c = base("metis".into(), 1000);
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(check(c, 0, None), Err("missing_claim"));
        assert_eq!(check(base("metis".into(), 1000), 0, Some("n1")), Ok(()));
        assert_eq!(
            check(base("metis".into(), 1000), 0, Some("n2")),
            Err("nonce_mismatch")
        );
    }

    #[test]
    fn jwks_keeps_signing_keys_and_skips_the_rest() {
        let body = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            "garbage"
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&String> = keys.keys().collect();
        kids.sort();
        assert_eq!(kids, ["e", "r"]);
        assert!(parse_jwks(b"[]").is_err());
    }

    proptest::proptest! {
        /// Arbitrary bearer strings never panic the decoder, and anything it accepts has a
        /// supported algorithm.
        #[test]
        fn decode_never_panics(s in "[A-Za-z0-9._-]{0,80}") {
            if let Ok(t) = decode(&s) {
                proptest::prop_assert!(matches!(t.alg, Alg::Rs256 | Alg::Es256));
            }
        }
    }
}
