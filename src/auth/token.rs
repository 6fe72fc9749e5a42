//! `auth.token`: bearer tokens from an external token service, as in the Docker registry token
//! spec (and Distribution's `auth.token`). A token is a JWT signed by a key in
//! `rootcertbundle` (PEM certificates) or in a JWKS file; its `iss` must be `issuer`, its `aud`
//! must include `service`, it must be within `nbf`..`exp`, and its `access` claim lists what it
//! grants: `{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}`,
//! `{"type": "registry", "name": "catalog", "actions": ["*"]}`.
//!
//! Tokens are checked against every configured key of the token's algorithm family (or the key
//! whose `kid` matches); an `x5c` chain in the header is not followed: the signing key's
//! certificate must itself be in the bundle.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use super::Action;

pub struct TokenVerifier {
    pub realm: String,
    pub service: String,
    issuer: String,
    keys: Vec<(Option<String>, DecodingKey, Family)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
}

fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        // Symmetric and other algorithms are never accepted: the registry holds no secret.
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    access: Vec<AccessEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

/// What a valid token says.
#[derive(Debug, Clone)]
pub struct Granted {
    pub subject: Option<String>,
    pub access: Vec<AccessEntry>,
}

impl Granted {
    pub fn allows(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == kind && a.name == name && a.actions.iter().any(|x| x == action || x == "*")
        })
    }

    pub fn allows_repository(&self, name: &str, action: Action) -> bool {
        self.allows("repository", name, action.as_str())
    }
}

impl TokenVerifier {
    pub fn new(
        realm: &str,
        service: &str,
        issuer: &str,
        rootcertbundle: Option<&Path>,
        jwks: Option<&Path>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !realm.is_empty() && !service.is_empty() && !issuer.is_empty(),
            "auth.token needs realm, service and issuer"
        );
        let mut keys = Vec::new();
        if let Some(path) = rootcertbundle {
            let text = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read auth.token.rootcertbundle {}: {e}",
                    path.display()
                )
            })?;
            for block in pem_blocks(&text) {
                let key = DecodingKey::from_rsa_pem(&block)
                    .map(|k| (k, Family::Rsa))
                    .or_else(|_| DecodingKey::from_ec_pem(&block).map(|k| (k, Family::Ec)))
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "auth.token.rootcertbundle {}: a certificate whose key cannot verify tokens ({e})",
                            path.display()
                        )
                    })?;
                keys.push((None, key.0, key.1));
            }
        }
        if let Some(path) = jwks {
            let text = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read auth.token.jwks {}: {e}", path.display())
            })?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
                anyhow::anyhow!("auth.token.jwks {}: not a JWK set: {e}", path.display())
            })?;
            for jwk in &set.keys {
                let fam = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Family::Rsa,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    anyhow::anyhow!("auth.token.jwks {}: unusable key: {e}", path.display())
                })?;
                keys.push((jwk.common.key_id.clone(), key, fam));
            }
        }
        anyhow::ensure!(
            !keys.is_empty(),
            "auth.token needs the token service's keys: rootcertbundle (PEM certificates) or jwks (a JWK set file)"
        );
        Ok(TokenVerifier {
            realm: realm.to_owned(),
            service: service.to_owned(),
            issuer: issuer.to_owned(),
            keys,
        })
    }

    /// The token's grants, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Granted, String> {
        let header = decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let fam = family(header.alg)
            .ok_or_else(|| format!("token algorithm {:?} is not accepted", header.alg))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.service]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let candidates = self.keys.iter().filter(|(kid, _, f)| {
            *f == fam
                && match (&header.kid, kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let mut last = "no key of the token's kind is configured".to_string();
        for (_, key, _) in candidates {
            match decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    return Ok(Granted {
                        subject: data.claims.sub,
                        access: data.claims.access,
                    });
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::InvalidSignature => "bad signature".into(),
                        K::ExpiredSignature => "token expired".into(),
                        K::ImmatureSignature => "token not yet valid".into(),
                        K::InvalidAudience => {
                            format!("token is not for service {:?}", self.service)
                        }
                        K::InvalidIssuer => format!("token is not from issuer {:?}", self.issuer),
                        other => format!("invalid token: {other:?}"),
                    };
                    // A claim problem is the same for every key: no need to try the others.
                    if !matches!(
                        e.kind(),
                        K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_)
                    ) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

/// The PEM blocks of a bundle, each as its own PEM text.
fn pem_blocks(text: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(c) = current.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END ") {
            if let Some(c) = current.take() {
                out.push(c.into_bytes());
            }
        }
    }
    out
}
