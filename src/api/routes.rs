//! The one place where a `/v2/...` path becomes a typed route. Repository names contain
//! slashes, so paths are matched from the right: the endpoint suffix decides, and whatever
//! precedes it must be a valid name. The future auth layer uses the same parse to learn which
//! repository and action a request is for.

use percent_encoding::percent_decode_str;

use actix_web::http::Method;

use crate::auth::{Action, Need};
use crate::error::Error;
use crate::oci::{Digest, DigestError, Reference, RepoName, UploadId};

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, UploadId),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Route {
    /// What the request needs to be allowed (see `auth`). Pushes need pull as well, as in
    /// Distribution, so a token service's grants mean the same here.
    pub fn need(&self, method: &Method) -> Need {
        let on = |n: &RepoName, actions: &[Action]| Need::Repository(n.clone(), actions.to_vec());
        match self {
            Route::Base => Need::Authenticated,
            Route::Catalog => Need::Catalog,
            Route::Tags(n) | Route::Referrers(n, _) => on(n, &[Action::Pull]),
            Route::Manifest(n, _) | Route::Blob(n, _) => match *method {
                Method::PUT => on(n, &[Action::Pull, Action::Push]),
                Method::DELETE => on(n, &[Action::Delete]),
                _ => on(n, &[Action::Pull]),
            },
            Route::UploadStart(n) | Route::Upload(n, _) => on(n, &[Action::Pull, Action::Push]),
        }
    }

    /// The route's name in logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) => "upload_start",
            Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }

    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags(n)
            | Route::Manifest(n, _)
            | Route::Blob(n, _)
            | Route::UploadStart(n)
            | Route::Upload(n, _)
            | Route::Referrers(n, _) => Some(n),
        }
    }
}

pub fn digest_error(e: DigestError) -> Error {
    // Both a malformed digest and an algorithm we do not store are DIGEST_INVALID; the
    // message tells which.
    Error::DigestInvalid(e.to_string())
}

fn name(s: &str) -> Result<RepoName, Error> {
    s.parse().map_err(Error::NameInvalid)
}

fn digest(s: &str) -> Result<Digest, Error> {
    s.parse().map_err(digest_error)
}

pub fn reference(s: &str) -> Result<Reference, Error> {
    if s.contains(':') {
        digest(s).map(Reference::Digest)
    } else {
        // A reference that is neither tag nor digest is a malformed manifest reference.
        s.parse()
            .map(Reference::Tag)
            .map_err(Error::ManifestInvalid)
    }
}

/// Upload ids are UUIDs we generated; anything else is unknown (and never reaches storage).
fn upload_id(s: &str) -> Result<UploadId, Error> {
    s.parse().map_err(Error::BlobUploadUnknown)
}

/// Parses the path after `/v2/`.
pub fn parse(tail: &str) -> Result<Route, Error> {
    let decoded = percent_decode_str(tail)
        .decode_utf8()
        .map_err(|_| Error::NameInvalid("the path is not valid UTF-8".into()))?;
    let path = decoded.as_ref();
    if path.is_empty() {
        return Ok(Route::Base);
    }
    if path == "_catalog" {
        return Ok(Route::Catalog);
    }
    if let Some(n) = path.strip_suffix("/tags/list") {
        return Ok(Route::Tags(name(n)?));
    }
    if let Some(n) = path
        .strip_suffix("/blobs/uploads/")
        .or_else(|| path.strip_suffix("/blobs/uploads"))
    {
        return Ok(Route::UploadStart(name(n)?));
    }
    if let Some((head, last)) = path.rsplit_once('/') {
        if let Some(n) = head.strip_suffix("/blobs/uploads") {
            return Ok(Route::Upload(name(n)?, upload_id(last)?));
        }
        if let Some(n) = head.strip_suffix("/manifests") {
            return Ok(Route::Manifest(name(n)?, reference(last)?));
        }
        if let Some(n) = head.strip_suffix("/blobs") {
            return Ok(Route::Blob(name(n)?, digest(last)?));
        }
        if let Some(n) = head.strip_suffix("/referrers") {
            return Ok(Route::Referrers(name(n)?, digest(last)?));
        }
    }
    Err(Error::NoRoute(format!(
        "/v2/{}",
        path.chars().take(300).collect::<String>()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const U: &str = "0b9d2a3e-1f6e-4c55-9d1e-2a0f4d6c8e10";

    fn n(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn routes_with_slashes_in_names() {
        assert_eq!(parse("").unwrap(), Route::Base);
        assert_eq!(parse("_catalog").unwrap(), Route::Catalog);
        assert_eq!(parse("a/b/tags/list").unwrap(), Route::Tags(n("a/b")));
        assert_eq!(
            parse("library/ubuntu/manifests/latest").unwrap(),
            Route::Manifest(
                n("library/ubuntu"),
                Reference::Tag("latest".parse().unwrap())
            )
        );
        assert_eq!(
            parse(&format!("x/manifests/{D}")).unwrap(),
            Route::Manifest(n("x"), Reference::Digest(D.parse().unwrap()))
        );
        assert_eq!(
            parse(&format!("a/blobs/b/blobs/{D}")).unwrap(),
            Route::Blob(n("a/blobs/b"), D.parse().unwrap())
        );
        assert_eq!(
            parse("a/blobs/uploads/").unwrap(),
            Route::UploadStart(n("a"))
        );
        assert_eq!(
            parse("a/blobs/uploads").unwrap(),
            Route::UploadStart(n("a"))
        );
        assert_eq!(
            parse(&format!("a/b/blobs/uploads/{U}")).unwrap(),
            Route::Upload(n("a/b"), U.parse().unwrap())
        );
        assert_eq!(
            parse(&format!("a/referrers/{D}")).unwrap(),
            Route::Referrers(n("a"), D.parse().unwrap())
        );
        // A repository may itself be called "tags" or "manifests".
        assert_eq!(parse("tags/tags/list").unwrap(), Route::Tags(n("tags")));
        assert_eq!(
            parse(&format!("x/manifests/{}", D.replace(':', "%3A"))).unwrap(),
            Route::Manifest(n("x"), Reference::Digest(D.parse().unwrap()))
        );
    }

    #[test]
    fn bad_paths() {
        assert!(matches!(
            parse("UPPER/tags/list"),
            Err(Error::NameInvalid(_))
        ));
        assert!(matches!(
            parse("../etc/tags/list"),
            Err(Error::NameInvalid(_))
        ));
        assert!(matches!(
            parse("a%2F..%2Fb/tags/list"),
            Err(Error::NameInvalid(_))
        ));
        assert!(matches!(
            parse("a/blobs/sha256:abc"),
            Err(Error::DigestInvalid(_))
        ));
        assert!(matches!(
            parse("a/manifests/bad:tag"),
            Err(Error::DigestInvalid(_))
        ));
        assert!(matches!(
            parse("a/manifests/-bad"),
            Err(Error::ManifestInvalid(_))
        ));
        assert!(matches!(
            parse("a/blobs/uploads/../../x"),
            Err(Error::NameInvalid(_) | Error::BlobUploadUnknown(_) | Error::NoRoute(_))
        ));
        assert!(matches!(
            parse("a/blobs/uploads/not-a-uuid"),
            Err(Error::BlobUploadUnknown(_))
        ));
        assert!(matches!(parse("a/unknown"), Err(Error::NoRoute(_))));
        assert!(matches!(
            parse(&format!("{}/tags/list", "a".repeat(300))),
            Err(Error::NameInvalid(_))
        ));
    }
}
