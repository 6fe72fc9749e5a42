//! The registry's vocabulary, parsed at the edge: digests, repository names, tags, references
//! and manifests. Nothing deeper than the HTTP layer takes a raw string for any of these.

mod digest;
pub mod manifest;
mod name;
mod upload;

pub use digest::{Digest, DigestError, Sha256Hasher};
pub use manifest::{MediaType, ParsedManifest};
pub use name::{Reference, RepoName, Tag};
pub use upload::{UploadId, upload_range};
