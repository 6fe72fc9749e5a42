//! Access control: who the caller is (anonymous, an htpasswd user, or the bearer of a token)
//! and whether that caller may do what a request needs. The HTTP layer asks; nothing below it
//! knows about callers.
//!
//! - No `auth` configured: the registry is open (anyone may do anything), as Distribution's.
//! - `auth.htpasswd`: Basic auth. Without a policy every authenticated user may do everything
//!   (Distribution's behaviour); with `auth.policy`, its grants decide, for users, groups and
//!   anonymous callers.
//! - `auth.token`: bearer tokens from an external token service; the token's `access` claim
//!   decides (`repository:<name>:pull,push,delete`, `registry:catalog:*`, `registry:admin:*`).

pub mod htpasswd;
pub mod policy;
pub mod token;

use std::sync::Arc;

use base64::Engine;

use crate::config::AuthConfig;
use crate::oci::RepoName;
use htpasswd::Htpasswd;
use policy::Policy;
use token::{Granted, TokenVerifier};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
    Admin,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            "admin" => Some(Action::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Admin => "admin",
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// `/v2/`: to know the caller, when the registry is not open to anonymous callers at all.
    Authenticated,
    Repository(RepoName, Vec<Action>),
    /// `_catalog` (the listing is then filtered to what the caller may pull).
    Catalog,
    /// `/admin/*`.
    Admin,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    User(String),
    Token(Granted),
}

impl Caller {
    /// The name to log.
    pub fn name(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::User(u) => Some(u),
            Caller::Token(g) => g.subject.as_deref(),
        }
    }
}

/// Why a request may not go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// 401: present (other) credentials; `challenge` is the `WWW-Authenticate` value.
    Unauthorized { challenge: String, message: String },
    /// 403: the caller is known and may not do this.
    Forbidden(String),
}

enum Mode {
    Htpasswd {
        file: Htpasswd,
        realm: String,
        policy: Option<Policy>,
    },
    Token(TokenVerifier),
}

pub struct Auth {
    mode: Mode,
}

impl Auth {
    /// The configured access control, or None for an open registry.
    pub fn from_config(c: &AuthConfig) -> anyhow::Result<Option<Arc<Auth>>> {
        let mode = match (&c.htpasswd, &c.token) {
            (None, None) => {
                anyhow::ensure!(
                    c.policy.is_none(),
                    "auth.policy needs auth.htpasswd (it grants rights to htpasswd users)"
                );
                return Ok(None);
            }
            (Some(_), Some(_)) => {
                anyhow::bail!("configure one of auth.htpasswd and auth.token, not both")
            }
            (Some(h), None) => Mode::Htpasswd {
                file: Htpasswd::open(&h.path)?,
                realm: h.realm.clone(),
                policy: c.policy.clone().map(Policy::new).transpose()?,
            },
            (None, Some(t)) => {
                anyhow::ensure!(
                    c.policy.is_none(),
                    "auth.policy applies to auth.htpasswd; with auth.token the tokens' access claims decide"
                );
                Mode::Token(TokenVerifier::new(
                    &t.realm,
                    &t.service,
                    &t.issuer,
                    t.rootcertbundle.as_deref(),
                    t.jwks.as_deref(),
                )?)
            }
        };
        Ok(Some(Arc::new(Auth { mode })))
    }

    /// Who the `Authorization` header says the caller is. Credentials that are present but
    /// wrong are refused (401), never treated as anonymous.
    pub async fn caller(&self, authorization: Option<&str>, need: &Need) -> Result<Caller, Denial> {
        let Some(value) = authorization else {
            return Ok(Caller::Anonymous);
        };
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        match (&self.mode, scheme.to_ascii_lowercase().as_str()) {
            (Mode::Htpasswd { file, .. }, "basic") => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':'))
                else {
                    return Err(self.unauthorized(need, "malformed Basic credentials", None));
                };
                if file.check(user, password).await {
                    Ok(Caller::User(user.to_owned()))
                } else {
                    Err(self.unauthorized(need, "invalid username or password", None))
                }
            }
            (Mode::Token(v), "bearer") => match v.verify(rest) {
                Ok(granted) => Ok(Caller::Token(granted)),
                Err(why) => Err(self.unauthorized(need, &why, Some("invalid_token"))),
            },
            _ => Err(self.unauthorized(
                need,
                &format!("unsupported authorization scheme {scheme:?}"),
                None,
            )),
        }
    }

    fn allows_action(&self, caller: &Caller, action: Action, repository: Option<&str>) -> bool {
        match (&self.mode, caller) {
            (Mode::Token(_), Caller::Token(g)) => match repository {
                Some(r) => g.allows_repository(r, action),
                None => g.allows("registry", action.as_str(), "*"),
            },
            (Mode::Token(_), _) => false,
            (Mode::Htpasswd { policy: None, .. }, Caller::User(_)) => true,
            (Mode::Htpasswd { policy: None, .. }, _) => false,
            (
                Mode::Htpasswd {
                    policy: Some(p), ..
                },
                c,
            ) => {
                let user = match c {
                    Caller::User(u) => Some(u.as_str()),
                    Caller::Anonymous => None,
                    Caller::Token(_) => return false,
                };
                p.allows(user, action, repository)
            }
        }
    }

    /// Whether `caller` may pull from `repository` (cross-repository mounts, catalog entries).
    pub fn may_pull(&self, caller: &Caller, repository: &RepoName) -> bool {
        self.allows_action(caller, Action::Pull, Some(repository.as_str()))
    }

    /// Whether the catalog lists everything for this caller (token mode) rather than what the
    /// caller may pull.
    pub fn catalog_unfiltered(&self, caller: &Caller) -> bool {
        matches!(caller, Caller::Token(_))
            || matches!(self.mode, Mode::Htpasswd { policy: None, .. })
    }

    /// Allows the request, or says why not.
    pub fn check(&self, caller: &Caller, need: &Need) -> Result<(), Denial> {
        let allowed = match need {
            Need::Authenticated => match (&self.mode, caller) {
                (_, Caller::User(_) | Caller::Token(_)) => true,
                (
                    Mode::Htpasswd {
                        policy: Some(p), ..
                    },
                    Caller::Anonymous,
                ) => p.grants_anonymous(),
                _ => false,
            },
            Need::Repository(name, actions) => actions
                .iter()
                .all(|a| self.allows_action(caller, *a, Some(name.as_str()))),
            Need::Catalog => match (&self.mode, caller) {
                (Mode::Token(_), Caller::Token(g)) => g.allows("registry", "catalog", "*"),
                (Mode::Token(_), _) => false,
                (Mode::Htpasswd { policy: None, .. }, c) => matches!(c, Caller::User(_)),
                // Filtered to what the caller may pull.
                (
                    Mode::Htpasswd {
                        policy: Some(p), ..
                    },
                    c,
                ) => matches!(c, Caller::User(_)) || p.grants_anonymous(),
            },
            Need::Admin => self.allows_action(caller, Action::Admin, None),
        };
        if allowed {
            return Ok(());
        }
        match (&self.mode, caller) {
            (_, Caller::Anonymous) => Err(self.unauthorized(need, "authentication required", None)),
            (Mode::Token(_), Caller::Token(_)) => Err(self.unauthorized(
                need,
                "the token does not grant the access this request needs",
                Some("insufficient_scope"),
            )),
            _ => Err(Denial::Forbidden(format!(
                "{} may not {}",
                caller.name().unwrap_or("this caller"),
                describe(need)
            ))),
        }
    }

    fn unauthorized(&self, need: &Need, message: &str, error: Option<&str>) -> Denial {
        let challenge = match &self.mode {
            Mode::Htpasswd { realm, .. } => format!("Basic realm=\"{}\"", quoted(realm)),
            Mode::Token(v) => {
                let mut c = format!(
                    "Bearer realm=\"{}\",service=\"{}\"",
                    quoted(&v.realm),
                    quoted(&v.service)
                );
                if let Some(scope) = scope(need) {
                    c.push_str(&format!(",scope=\"{scope}\""));
                }
                if let Some(e) = error {
                    c.push_str(&format!(",error=\"{e}\""));
                }
                c
            }
        };
        Denial::Unauthorized {
            challenge,
            message: message.to_owned(),
        }
    }
}

/// The token scope a need asks for, as the token spec writes it.
pub fn scope(need: &Need) -> Option<String> {
    match need {
        Need::Authenticated => None,
        Need::Repository(name, actions) => Some(format!(
            "repository:{name}:{}",
            actions
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(",")
        )),
        Need::Catalog => Some("registry:catalog:*".into()),
        Need::Admin => Some("registry:admin:*".into()),
    }
}

fn describe(need: &Need) -> String {
    match need {
        Need::Authenticated => "use this registry".into(),
        Need::Repository(name, actions) => format!(
            "{} {name}",
            actions
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join("/")
        ),
        Need::Catalog => "list repositories".into(),
        Need::Admin => "use the admin endpoints".into(),
    }
}

fn quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
