//! Deterministic OCI images built in memory: real gzip'ed tar layers, configs, image manifests,
//! multi-platform indexes; and OCI image layouts on disk for skopeo.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

use super::sha256;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An image: every blob, the child manifests (for an index), and the top manifest.
#[derive(Clone)]
pub struct Image {
    pub blobs: Vec<Vec<u8>>,
    pub children: Vec<(String, Vec<u8>)>,
    pub media_type: String,
    pub manifest: Vec<u8>,
}

impl Image {
    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    pub fn blob_digests(&self) -> Vec<String> {
        self.blobs.iter().map(|b| sha256(b)).collect()
    }
}

/// Pseudo-random bytes from a seed (xorshift): distinct seeds, distinct content.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A gzip'ed tar holding one file of `len` pseudo-random bytes.
pub fn layer(seed: u64, len: usize) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let data = noise(seed, len);
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, format!("file-{seed}"), data.as_slice())
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": sha256(data), "size": data.len()})
}

/// A single-platform image with `layers` layers from the given seeds.
pub fn single(media_type: &str, platform: &str, layer_seeds: &[u64], layer_len: usize) -> Image {
    let docker = media_type == DOCKER_MANIFEST;
    let (arch, os) = (platform.split('/').nth(1).unwrap_or("amd64"), "linux");
    let layers: Vec<Vec<u8>> = layer_seeds.iter().map(|s| layer(*s, layer_len)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": os,
        "rootfs": {"type": "layers", "diff_ids": layer_seeds.iter().map(|s| format!("seed-{s}")).collect::<Vec<_>>()},
        "config": {}
    }))
    .unwrap();
    let (config_type, layer_type) = if docker {
        (
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, &config),
        "layers": layers.iter().map(|l| descriptor(layer_type, l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut blobs = vec![config];
    blobs.extend(layers);
    Image {
        blobs,
        children: Vec::new(),
        media_type: media_type.to_string(),
        manifest,
    }
}

/// A multi-platform index (OCI index or Docker manifest list) over one image per platform;
/// platform `i` uses layer seeds `seed*100 + i*10 + k`, plus any `shared_seeds` first.
pub fn multiarch(
    list_type: &str,
    seed: u64,
    platforms: &[&str],
    layers: usize,
    layer_len: usize,
    shared_seeds: &[u64],
) -> Image {
    let child_type = if list_type == DOCKER_LIST {
        DOCKER_MANIFEST
    } else {
        OCI_MANIFEST
    };
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    let mut children = Vec::new();
    let mut entries = Vec::new();
    for (i, platform) in platforms.iter().enumerate() {
        let mut seeds: Vec<u64> = shared_seeds.to_vec();
        seeds.extend((0..layers as u64).map(|k| seed * 100 + i as u64 * 10 + k));
        let img = single(child_type, platform, &seeds, layer_len);
        for b in img.blobs {
            if !blobs.contains(&b) {
                blobs.push(b);
            }
        }
        let (os, arch) = platform.split_once('/').unwrap();
        let mut d = descriptor(child_type, &img.manifest);
        d["platform"] = json!({"os": os, "architecture": arch});
        entries.push(d);
        children.push((child_type.to_string(), img.manifest));
    }
    let manifest = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": list_type, "manifests": entries}),
    )
    .unwrap();
    Image {
        blobs,
        children,
        media_type: list_type.to_string(),
        manifest,
    }
}

/// An artifact manifest (e.g. a signature) whose subject is `subject`.
pub fn referrer(artifact_type: &str, subject_media_type: &str, subject: &[u8], seed: u64) -> Image {
    let empty = b"{}".to_vec();
    let payload = noise(seed, 64);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor("application/vnd.oci.empty.v1+json", &empty),
        "layers": [descriptor("application/octet-stream", &payload)],
        "subject": descriptor(subject_media_type, subject),
        "annotations": {"org.example.seed": seed.to_string()},
    }))
    .unwrap();
    Image {
        blobs: vec![empty, payload],
        children: Vec::new(),
        media_type: OCI_MANIFEST.to_string(),
        manifest,
    }
}

/// Writes an OCI image layout holding `image` under `tag`.
pub fn write_layout(dir: &Path, tag: &str, image: &Image) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let write_blob = |data: &[u8]| {
        let d = sha256(data);
        std::fs::write(blobs.join(d.strip_prefix("sha256:").unwrap()), data).unwrap();
    };
    for b in &image.blobs {
        write_blob(b);
    }
    for (_, c) in &image.children {
        write_blob(c);
    }
    write_blob(&image.manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut d = descriptor(&image.media_type, &image.manifest);
    d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d]}))
            .unwrap(),
    )
    .unwrap();
}
