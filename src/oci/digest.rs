//! Content digests (`sha256:<64 hex>`), and the resumable SHA-256 used by uploads.

use std::fmt;
use std::str::FromStr;

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256};

/// A validated content digest. Only `sha256` is accepted for content: it is the only algorithm
/// every client and Distribution agree on, and it lets the digest's hex form a storage path
/// without any escaping (it is exactly 64 lowercase hex characters).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex characters>")]
    Invalid(String),
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    UnsupportedAlgorithm(String),
}

impl Digest {
    pub fn from_sha256_bytes(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(bytes)))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_sha256_bytes(&Sha256::digest(data))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn algorithm(&self) -> &str {
        "sha256"
    }

    /// The 64 hex characters after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(DigestError::Invalid(truncate(s)));
        };
        // The OCI grammar: algorithm-component (separator component)* ":" [a-zA-Z0-9=_-]+
        let algorithm_ok = !algorithm.is_empty()
            && algorithm.split(['+', '.', '_', '-']).all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        let encoded_ok = !encoded.is_empty()
            && encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-');
        if !algorithm_ok || !encoded_ok {
            return Err(DigestError::Invalid(truncate(s)));
        }
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(truncate(s)));
        }
        if encoded.len() != 64
            || !encoded
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::Invalid(truncate(s)));
        }
        Ok(Digest(s.to_owned()))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 whose running state can be saved in the database after every chunk, so an upload
/// continues on another replica (or after a restart) without re-reading its bytes.
#[derive(Clone, Default)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn save(&self) -> Vec<u8> {
        self.0.serialize().to_vec()
    }

    /// Restores a state written by [`Sha256Hasher::save`]; `None` if it is not one.
    pub fn restore(state: &[u8]) -> Option<Self> {
        let state = state.try_into().ok()?;
        Sha256::deserialize(state).ok().map(Sha256Hasher)
    }

    pub fn digest(&self) -> Digest {
        Digest::from_sha256_bytes(&self.0.clone().finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha256_and_rejects_the_rest() {
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d, Digest::of(b""));
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            "sha256:../../../../etc/passwd",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85/",
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(DigestError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "sha512:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn hash_state_survives_a_save_and_restore() {
        let mut h = Sha256Hasher::new();
        h.update(b"hello ");
        let saved = h.save();
        let mut resumed = Sha256Hasher::restore(&saved).unwrap();
        resumed.update(b"world");
        assert_eq!(resumed.digest(), Digest::of(b"hello world"));
        assert!(Sha256Hasher::restore(b"nope").is_none());
    }
}
