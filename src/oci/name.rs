//! Repository names, tags and manifest references, validated against the distribution spec's
//! grammar. A valid name has no `.`/`..` components and no characters outside `[a-z0-9._/-]`,
//! so it can never escape a storage root.

use std::fmt;
use std::str::FromStr;

use super::Digest;

/// Distribution's limit on a repository name (the spec asks clients to stay under it).
pub const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-"; always followed by alnum
        // (the last byte is alnum, so the run cannot end the component).
        let run_start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let run = &c[run_start..i];
        let ok = run == "." || run == "_" || run == "__" || run.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl FromStr for RepoName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_NAME_LEN {
            return Err(format!(
                "repository name is {} characters long; the limit is {MAX_NAME_LEN}",
                s.len()
            ));
        }
        if s.split('/').all(valid_component) {
            Ok(RepoName(s.to_owned()))
        } else {
            Err(format!(
                "invalid repository name {:?}: components must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*, separated by '/'",
                s.chars().take(100).collect::<String>()
            ))
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(format!(
                "invalid tag {:?}: tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}",
                s.chars().take(140).collect::<String>()
            ))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `<reference>` of a manifest URL: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for good in [
            "a",
            "library/ubuntu",
            "a.b_c__d---e/f0",
            "team/app/sub",
            "x9",
        ] {
            assert!(good.parse::<RepoName>().is_ok(), "{good}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "..", "a/../b", "a/./b", ".a", "a.", "a___b", "a..b",
            "a:b", "a b", "a/b%2f", "_a", "a-", "a/-b",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
        let long = "a".repeat(256);
        assert!(long.parse::<RepoName>().is_err());
        assert!("a".repeat(255).parse::<RepoName>().is_ok());
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for good in ["latest", "v1.0.0", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(good.parse::<Tag>().is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "a:b", "a/b", &"t".repeat(129), "ä"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }
}
