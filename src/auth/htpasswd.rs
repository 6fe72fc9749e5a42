//! `auth.htpasswd`: Basic auth against an htpasswd file of bcrypt entries (`htpasswd -B`, as
//! Distribution requires). The file is read again when it changes; a file that no longer
//! parses keeps the previous entries (and says so in the log). Verified passwords are cached
//! per process (bcrypt costs tens of milliseconds a check), keyed by the entry's hash, so a
//! changed password is checked afresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

pub struct Htpasswd {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    stamp: Option<(SystemTime, u64)>,
    entries: HashMap<String, String>,
    /// sha256(user, password, hash) of checks that passed.
    verified: std::collections::HashSet<[u8; 32]>,
}

/// Parses the file; every entry must be bcrypt.
pub fn parse(text: &str, path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let mut entries = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            anyhow::bail!("{} line {}: expected user:hash", path.display(), i + 1);
        };
        if !["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
            anyhow::bail!(
                "{} line {} (user {user:?}): only bcrypt entries are supported (create them with `htpasswd -B`)",
                path.display(),
                i + 1
            );
        }
        entries.insert(user.to_owned(), hash.to_owned());
    }
    Ok(entries)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Htpasswd {
    /// Reads the file; refuses to start on a missing file or a non-bcrypt entry.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read auth.htpasswd.path {}: {e} (create it with `htpasswd -Bbn user password > {}`)",
                path.display(),
                path.display()
            )
        })?;
        let entries = parse(&text, path)?;
        Ok(Htpasswd {
            path: path.to_owned(),
            state: Mutex::new(State {
                stamp: stamp(path),
                entries,
                verified: Default::default(),
            }),
        })
    }

    /// The entry for `user` (re-reading the file if it changed).
    fn entry(&self, user: &str) -> Option<String> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&self.path);
        if now != st.stamp {
            st.stamp = now;
            match std::fs::read_to_string(&self.path)
                .map_err(anyhow::Error::from)
                .and_then(|t| parse(&t, &self.path))
            {
                Ok(entries) => {
                    tracing::info!(path = %self.path.display(), users = entries.len(), "htpasswd file reloaded");
                    st.entries = entries;
                    st.verified.clear();
                }
                Err(e) => {
                    tracing::error!(error = %e, "htpasswd file changed but cannot be used; keeping the previous entries")
                }
            }
        }
        st.entries.get(user).cloned()
    }

    /// Whether `password` is `user`'s.
    pub async fn check(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.entry(user) else {
            return false;
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        if self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .verified
            .contains(&key)
        {
            return true;
        }
        let password = password.to_owned();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if ok {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.verified.len() > 10_000 {
                st.verified.clear();
            }
            st.verified.insert(key);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_hash_kinds_naming_the_line() {
        let p = Path::new("htpasswd");
        let e = parse("alice:$2y$05$abcdefghijklmnopqrstuv\nbob:{SHA}xyz\n", p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("line 2") && msg.contains("bob") && msg.contains("htpasswd -B"),
            "{msg}"
        );
        assert!(parse("alice:$apr1$x$y", p).is_err());
        assert_eq!(parse("# comment\n\nalice:$2b$04$x\n", p).unwrap().len(), 1);
    }
}
