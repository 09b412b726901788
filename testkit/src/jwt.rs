//! A JWT issuer for tests: an ES256 key, its JWKS, and signed tokens.

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

/// Signs tokens for one issuer.
pub struct JwtIssuer {
    /// `iss`.
    pub issuer: String,
    kid: String,
    key: EncodingKey,
    jwks: String,
}

impl JwtIssuer {
    /// A new issuer with a fresh P-256 key.
    pub fn new(issuer: &str, kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate().expect("P-256 key");
        let raw = pair.public_key_raw();
        // Uncompressed point: 0x04 || X || Y.
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]})
        .to_string();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC key");
        Self {
            issuer: issuer.into(),
            kid: kid.into(),
            key,
            jwks,
        }
    }

    /// The public keys, as `jwks` in a RequestAuthentication takes them.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// A token with `iss` set and the given extra claims (`sub`, `aud`, `exp`, ...).
    pub fn token(&self, claims: serde_json::Value) -> String {
        let mut c = claims;
        c["iss"] = serde_json::Value::String(self.issuer.clone());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        encode(&header, &c, &self.key).expect("sign")
    }
}

/// Seconds since the epoch, for `exp` and `nbf`.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
