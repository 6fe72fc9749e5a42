//! Manifest parsing: from the pushed bytes to what the metadata model records — the media type,
//! the blobs it references (config + layers), the child manifests (index/list entries), the
//! subject and the artifact type. The bytes themselves are stored and served untouched.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
/// Layers that live elsewhere (Windows base layers): Distribution does not require them to be
/// pushed, and neither do we, when they carry `urls`.
const FOREIGN_LAYERS: &[&str] = &[
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaType {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerList,
}

impl MediaType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            OCI_MANIFEST => Some(Self::OciManifest),
            OCI_INDEX => Some(Self::OciIndex),
            DOCKER_MANIFEST => Some(Self::DockerManifest),
            DOCKER_LIST => Some(Self::DockerList),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OciManifest => OCI_MANIFEST,
            Self::OciIndex => OCI_INDEX,
            Self::DockerManifest => DOCKER_MANIFEST,
            Self::DockerList => DOCKER_LIST,
        }
    }

    pub fn is_index(self) -> bool {
        matches!(self, Self::OciIndex | Self::DockerList)
    }
}

/// What the registry needs to know about a manifest.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    pub media_type: MediaType,
    /// Config digest (image manifests only).
    pub config: Option<Digest>,
    /// Every blob the manifest references and that must exist in the repository:
    /// config first, then layers, without duplicates.
    pub blobs: Vec<Digest>,
    /// The size each descriptor declares for `blobs[i]`.
    pub blob_sizes: Vec<u64>,
    /// Child manifests of an index / manifest list, without duplicates.
    pub children: Vec<Digest>,
    /// The size each descriptor declares for `children[i]`.
    pub child_sizes: Vec<u64>,
    pub subject: Option<Digest>,
    /// `artifactType`, falling back to the config media type for image manifests.
    pub artifact_type: Option<String>,
    pub annotations: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<Value>,
    media_type: Option<Value>,
    artifact_type: Option<Value>,
    config: Option<Value>,
    layers: Option<Value>,
    manifests: Option<Value>,
    subject: Option<Value>,
    annotations: Option<Value>,
}

struct Descriptor {
    media_type: String,
    digest: Digest,
    size: u64,
    has_urls: bool,
}

/// A media type as RFC 6838 shapes it (`type/subtype`, printable ASCII without spaces): what
/// is stored of a manifest's own text (its artifact type) must be one.
fn is_media_type(s: &str) -> bool {
    s.len() <= 255 && s.contains('/') && s.bytes().all(|c| c.is_ascii_graphic())
}

fn descriptor(v: &Value, what: &str) -> Result<Descriptor, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{what} is not a JSON object"))?;
    let media_type = obj
        .get("mediaType")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{what} has no mediaType"))?
        .to_owned();
    let digest = obj
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{what} has no digest"))?;
    let digest: Digest = digest.parse().map_err(|e| format!("{what}: {e}"))?;
    let size = match obj.get("size") {
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
        _ => return Err(format!("{what} has no valid size (a non-negative integer)")),
    };
    let has_urls = obj
        .get("urls")
        .and_then(Value::as_array)
        .is_some_and(|u| !u.is_empty());
    Ok(Descriptor {
        media_type,
        digest,
        size,
        has_urls,
    })
}

fn descriptors(v: &Value, what: &str) -> Result<Vec<Descriptor>, String> {
    let arr = v
        .as_array()
        .ok_or_else(|| format!("{what} is not a JSON array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, d)| descriptor(d, &format!("{what}[{i}]")))
        .collect()
}

/// Adds a referenced digest once; the same digest declared with two sizes is invalid.
fn push_unique(list: &mut Vec<Digest>, sizes: &mut Vec<u64>, d: Descriptor) -> Result<(), String> {
    match list.iter().position(|x| *x == d.digest) {
        Some(i) if sizes[i] != d.size => Err(format!(
            "{} is listed with two sizes, {} and {}",
            d.digest, sizes[i], d.size
        )),
        Some(_) => Ok(()),
        None => {
            list.push(d.digest);
            sizes.push(d.size);
            Ok(())
        }
    }
}

/// Parses a pushed manifest. `content_type` is the request's Content-Type (parameters removed).
/// Errors are messages for a MANIFEST_INVALID answer.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, String> {
    let raw: RawManifest = serde_json::from_slice(body)
        .map_err(|e| format!("manifest is not a valid JSON object: {e}"))?;
    let body_type = match &raw.media_type {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("mediaType must be a string".into()),
    };
    if let Some(t) = body_type
        .into_iter()
        .chain(content_type)
        .find(|t| DOCKER_SCHEMA1.contains(t))
    {
        return Err(format!(
            "Docker schema 1 manifests ({t}) are not supported; push schema 2 or OCI (e.g. `docker push` from Docker 1.10 or later)"
        ));
    }
    match &raw.schema_version {
        Some(Value::Number(n)) if n.as_u64() == Some(2) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {
            return Err("Docker schema 1 manifests are not supported; push schema 2 or OCI".into());
        }
        _ => return Err("schemaVersion must be 2".into()),
    }
    // A Content-Type of one of the manifest types must agree with the body's mediaType; other
    // Content-Types (absent, application/json, octet-stream) defer to the body.
    let header_type = content_type.and_then(MediaType::parse);
    let media_type = match (body_type, header_type) {
        (Some(b), Some(h)) if b != h.as_str() => {
            return Err(format!(
                "mediaType {b:?} in the manifest does not match Content-Type {:?}",
                h.as_str()
            ));
        }
        (Some(b), _) => {
            MediaType::parse(b).ok_or_else(|| format!("unsupported manifest mediaType {b:?}"))?
        }
        (None, Some(h)) => h,
        (None, None) => {
            if raw.manifests.is_some() {
                MediaType::OciIndex
            } else if raw.config.is_some() {
                MediaType::OciManifest
            } else {
                return Err("cannot tell the manifest's type: no mediaType, no Content-Type, no config or manifests".into());
            }
        }
    };
    if matches!(
        media_type,
        MediaType::DockerManifest | MediaType::DockerList
    ) && body_type.is_none()
    {
        return Err(format!(
            "a {} must carry its mediaType",
            media_type.as_str()
        ));
    }

    let artifact_type = match &raw.artifact_type {
        None => None,
        Some(Value::String(s)) if is_media_type(s) => Some(s.clone()),
        Some(Value::String(s)) => {
            return Err(format!(
                "artifactType {:?} is not a media type",
                s.escape_debug().to_string()
            ));
        }
        Some(_) => return Err("artifactType must be a string".into()),
    };
    let subject = raw
        .subject
        .as_ref()
        .map(|s| descriptor(s, "subject").map(|d| d.digest))
        .transpose()?;
    let annotations = match raw.annotations {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => return Err("annotations must be an object".into()),
    };

    let mut parsed = ParsedManifest {
        media_type,
        config: None,
        blobs: Vec::new(),
        blob_sizes: Vec::new(),
        children: Vec::new(),
        child_sizes: Vec::new(),
        subject,
        artifact_type,
        annotations,
    };
    if media_type.is_index() {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err("an index has no config or layers".into());
        }
        let manifests = raw
            .manifests
            .as_ref()
            .ok_or("an index must have a manifests array")?;
        for d in descriptors(manifests, "manifests")? {
            push_unique(&mut parsed.children, &mut parsed.child_sizes, d)?;
        }
    } else {
        if raw.manifests.is_some() {
            return Err("an image manifest has no manifests array".into());
        }
        let config = descriptor(
            raw.config
                .as_ref()
                .ok_or("an image manifest must have a config")?,
            "config",
        )?;
        if !is_media_type(&config.media_type) {
            return Err(format!(
                "config mediaType {:?} is not a media type",
                config.media_type.escape_debug().to_string()
            ));
        }
        if parsed.artifact_type.is_none() {
            parsed.artifact_type = Some(config.media_type.clone());
        }
        parsed.config = Some(config.digest.clone());
        push_unique(&mut parsed.blobs, &mut parsed.blob_sizes, config)?;
        let layers = raw
            .layers
            .as_ref()
            .ok_or("an image manifest must have a layers array")?;
        for layer in descriptors(layers, "layers")? {
            if layer.has_urls && FOREIGN_LAYERS.contains(&layer.media_type.as_str()) {
                continue;
            }
            push_unique(&mut parsed.blobs, &mut parsed.blob_sizes, layer)?;
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":5}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":5}}]{extra}}}"#
        )
    }

    #[test]
    fn image_manifest_edges() {
        let m = parse(image("").as_bytes(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(m.media_type, MediaType::OciManifest);
        assert_eq!(m.blobs.len(), 2, "duplicates collapse");
        assert_eq!(m.config.unwrap().as_str(), D1);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let with_subject = image(&format!(
            r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":3}},"artifactType":"application/x.sig""#
        ));
        let m = parse(with_subject.as_bytes(), None).unwrap();
        assert_eq!(m.subject.unwrap().as_str(), D1);
        assert_eq!(m.artifact_type.as_deref(), Some("application/x.sig"));
    }

    #[test]
    fn index_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1}},{{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":1}}]}}"#
        );
        let m = parse(body.as_bytes(), Some(OCI_INDEX)).unwrap();
        assert_eq!(m.media_type, MediaType::OciIndex);
        assert_eq!(m.children.len(), 2);
        assert!(m.blobs.is_empty());
        // Without any type information the structure decides.
        assert_eq!(
            parse(body.as_bytes(), None).unwrap().media_type,
            MediaType::OciIndex
        );
    }

    #[test]
    fn rejections() {
        assert!(parse(b"not json", None).is_err());
        assert!(parse(b"[]", None).is_err());
        assert!(
            parse(image("").as_bytes(), Some(OCI_INDEX))
                .unwrap_err()
                .contains("does not match")
        );
        let schema1 = r#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(
            parse(schema1.as_bytes(), Some(DOCKER_SCHEMA1[1]))
                .unwrap_err()
                .contains("schema 1")
        );
        assert!(
            parse(schema1.as_bytes(), None)
                .unwrap_err()
                .contains("schema 1")
        );
        let bad_digest = image("").replace(D2, "sha256:zz");
        assert!(parse(bad_digest.as_bytes(), None).is_err());
        let docker_without_type =
            image("").replace(&format!(r#""mediaType":"{OCI_MANIFEST}","#), "");
        assert!(parse(docker_without_type.as_bytes(), Some(DOCKER_MANIFEST)).is_err());
    }
}
