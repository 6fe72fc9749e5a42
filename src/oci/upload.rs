//! Upload sessions as the spec sees them: the id a client carries in its `Location`, and the
//! `Range` header that reports an upload's progress.

use std::fmt;

/// An upload session id: a hyphenated lowercase UUID that this registry generated. Parsing is
/// the only way to make one from client input, so every deeper layer (the database, a storage
/// driver building a path or key from it) may rely on it holding no separator or dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    pub fn generate() -> Self {
        UploadId(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for UploadId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match uuid::Uuid::parse_str(s) {
            Ok(u) if u.hyphenated().to_string() == s => Ok(UploadId(s.to_owned())),
            _ => Err(format!("{:?}", s.chars().take(80).collect::<String>())),
        }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `Range` value of an upload holding `size` bytes: inclusive, `0-<last byte>`; `0-0`
/// for an empty upload, as Distribution answers.
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyphenated_lowercase_uuids_parse() {
        let id = UploadId::generate();
        assert_eq!(id.as_str().parse::<UploadId>().unwrap(), id);
        for bad in [
            "",
            "../../etc/passwd",
            "0a5c3e8e-2d3f-4b8e-9c1a-1d2e3f4a5b6",
            "0A5C3E8E-2D3F-4B8E-9C1A-1D2E3F4A5B6C",
            "0a5c3e8e2d3f4b8e9c1a1d2e3f4a5b6c",
            "0a5c3e8e-2d3f-4b8e-9c1a-1d2e3f4a5b6c/x",
        ] {
            assert!(bad.parse::<UploadId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn range_is_inclusive() {
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(1), "0-0");
        assert_eq!(upload_range(1024), "0-1023");
    }
}
