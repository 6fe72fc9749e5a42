//! `auth.policy`: who may do what on which repositories, beyond Distribution's all-or-nothing
//! htpasswd. Grants name users, groups (`group:<name>`), any authenticated user (`*`) or
//! `anonymous`; repository patterns match by path segment (`*` one segment, or part of one;
//! `**` any number of segments); actions are `pull`, `push`, `delete` and `admin` (the
//! `/admin` endpoints; repositories do not apply to it).

use std::collections::HashMap;

use super::Action;
use crate::config::PolicyConfig;

/// A grant with its actions parsed.
#[derive(Debug, Clone)]
struct Grant {
    who: Vec<String>,
    repositories: Vec<String>,
    actions: Vec<Action>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    groups: HashMap<String, Vec<String>>,
    grants: Vec<Grant>,
}

impl Policy {
    pub fn new(config: PolicyConfig) -> anyhow::Result<Self> {
        let mut grants = Vec::new();
        for (i, g) in config.grants.into_iter().enumerate() {
            let actions = g
                .actions
                .iter()
                .map(|a| {
                    Action::parse(a).ok_or_else(|| {
                        anyhow::anyhow!(
                            "auth.policy.grants[{i}]: unknown action {a:?} (pull, push, delete, admin)"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let repositories = if g.repositories.is_empty() {
                vec!["**".to_string()]
            } else {
                g.repositories
            };
            grants.push(Grant {
                who: g.who,
                repositories,
                actions,
            });
        }
        for (i, g) in grants.iter().enumerate() {
            anyhow::ensure!(
                !g.who.is_empty() && !g.actions.is_empty(),
                "auth.policy.grants[{i}] needs `who` and `actions`"
            );
            for w in &g.who {
                if let Some(group) = w.strip_prefix("group:") {
                    anyhow::ensure!(
                        config.groups.contains_key(group),
                        "auth.policy.grants[{i}] names group {group:?}, which auth.policy.groups does not define"
                    );
                }
            }
            for p in &g.repositories {
                anyhow::ensure!(
                    !p.is_empty() && !p.starts_with('/') && !p.ends_with('/'),
                    "auth.policy.grants[{i}]: repository pattern {p:?} is empty or starts or ends with '/'"
                );
            }
        }
        Ok(Policy {
            groups: config.groups,
            grants,
        })
    }

    fn names(&self, grant: &Grant, user: Option<&str>) -> bool {
        grant.who.iter().any(|w| match (w.as_str(), user) {
            ("anonymous", None) => true,
            ("*", Some(_)) => true,
            (w, Some(u)) => match w.strip_prefix("group:") {
                Some(g) => self
                    .groups
                    .get(g)
                    .is_some_and(|members| members.iter().any(|m| m == u)),
                None => w == u,
            },
            _ => false,
        })
    }

    /// Whether `user` (None: anonymous) may do `action` on `repository` (None: registry-wide
    /// actions, i.e. admin).
    pub fn allows(&self, user: Option<&str>, action: Action, repository: Option<&str>) -> bool {
        self.grants.iter().any(|g| {
            self.names(g, user)
                && g.actions.contains(&action)
                && match repository {
                    None => action == Action::Admin,
                    Some(r) => g.repositories.iter().any(|p| pattern_matches(p, r)),
                }
        })
    }

    /// Whether the policy grants anything at all to anonymous clients.
    pub fn grants_anonymous(&self) -> bool {
        self.grants
            .iter()
            .any(|g| g.who.iter().any(|w| w == "anonymous"))
    }
}

/// `team/*` matches `team/app`, not `team/app/web`; `*/public/**` matches `a/public` and
/// `a/public/b/c`; `team-*` matches the segment `team-x`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    segments_match(&p, &n)
}

fn segments_match(p: &[&str], n: &[&str]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((&"**", rest)) => (0..=n.len()).any(|k| segments_match(rest, &n[k..])),
        Some((seg, rest)) => match n.split_first() {
            Some((name, nrest)) => {
                glob(seg.as_bytes(), name.as_bytes()) && segments_match(rest, nrest)
            }
            None => false,
        },
    }
}

/// `*` within one segment: any run of characters.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| glob(rest, &s[k..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("team/*", "team/app"));
        assert!(!pattern_matches("team/*", "team/app/web"));
        assert!(!pattern_matches("team/*", "team"));
        assert!(pattern_matches("team/**", "team/app/web"));
        assert!(pattern_matches("*/public/**", "a/public"));
        assert!(pattern_matches("*/public/**", "a/public/b/c"));
        assert!(!pattern_matches("*/public/**", "a/b/public"));
        assert!(pattern_matches("**", "anything/at/all"));
        assert!(pattern_matches("team-*", "team-x"));
        assert!(!pattern_matches("team-*", "teamx"));
        assert!(pattern_matches("alpine", "alpine"));
        assert!(!pattern_matches("alpine", "alpine2"));
    }

    #[test]
    fn grants() {
        let yaml = r#"
groups: {devs: [bob, carol]}
grants:
  - {who: ["group:devs"], repositories: ["team/*"], actions: [pull, push]}
  - {who: [anonymous], repositories: ["*/public/**"], actions: [pull]}
  - {who: ["*"], repositories: ["shared/**"], actions: [pull]}
  - {who: [alice], actions: [admin, pull, push, delete]}
"#;
        let p = Policy::new(serde_yaml::from_str(yaml).unwrap()).unwrap();
        assert!(p.allows(Some("bob"), Action::Push, Some("team/app")));
        assert!(!p.allows(Some("bob"), Action::Delete, Some("team/app")));
        assert!(!p.allows(Some("bob"), Action::Pull, Some("other/app")));
        assert!(p.allows(None, Action::Pull, Some("x/public/y")));
        assert!(!p.allows(None, Action::Push, Some("x/public/y")));
        assert!(p.allows(Some("dave"), Action::Pull, Some("shared/a/b")));
        assert!(!p.allows(None, Action::Pull, Some("shared/a")));
        assert!(p.allows(Some("alice"), Action::Admin, None));
        assert!(!p.allows(Some("bob"), Action::Admin, None));
        assert!(p.grants_anonymous());
        let bad: PolicyConfig =
            serde_yaml::from_str("grants: [{who: ['group:nope'], actions: [pull]}]").unwrap();
        assert!(Policy::new(bad).is_err());
    }
}
