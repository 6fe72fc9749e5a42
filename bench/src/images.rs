//! Deterministic test data: pseudo-random bytes, gzip'ed tar layers written as they are
//! generated, and OCI image layouts (single-platform images and multi-platform indexes) that
//! skopeo copies from.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// xorshift64: fast, and the same bytes for the same seed on every machine.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }

    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Noise::new(seed).fill(&mut v);
        v
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An OCI image layout directory being filled.
pub struct Layout {
    dir: PathBuf,
    blobs: PathBuf,
    index: Vec<Value>,
    pub unique_bytes: u64,
    pub unique_blobs: u64,
}

impl Layout {
    pub fn create(dir: &Path) -> anyhow::Result<Layout> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Layout {
            dir: dir.to_path_buf(),
            blobs,
            index: Vec::new(),
            unique_bytes: 0,
            unique_blobs: 0,
        })
    }

    fn note(&mut self, path: &Path, size: u64) {
        if !path.exists() {
            self.unique_bytes += size;
            self.unique_blobs += 1;
        }
    }

    pub fn blob(&mut self, media_type: &str, data: &[u8]) -> anyhow::Result<Descriptor> {
        let hex = sha256_hex(data);
        let path = self.blobs.join(&hex);
        self.note(&path, data.len() as u64);
        std::fs::write(&path, data)?;
        Ok(Descriptor {
            media_type: media_type.to_string(),
            digest: format!("sha256:{hex}"),
            size: data.len() as u64,
        })
    }

    /// A gzip stream (stored blocks: nothing to recompress, cheap to make) of a tar holding
    /// one file of `len` pseudo-random bytes from `seed`, written while it is generated.
    pub fn layer(&mut self, seed: u64, len: u64) -> anyhow::Result<Descriptor> {
        let tmp = self.blobs.join(format!(".tmp-{seed}"));
        let file = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let mut out = Hashing {
            inner: file,
            hash: Sha256::new(),
            len: 0,
        };
        {
            let mut gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::none());
            gz.write_all(&tar_header(&format!("layer-{seed}.bin"), len))?;
            let mut noise = Noise::new(seed);
            let mut buf = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                noise.fill(&mut buf[..n]);
                gz.write_all(&buf[..n])?;
                left -= n as u64;
            }
            let pad = (512 - (len % 512) as usize) % 512;
            gz.write_all(&vec![0u8; pad + 1024])?;
            gz.finish()?;
        }
        out.flush()?;
        let hex = hex::encode(out.hash.finalize());
        let size = out.len;
        let path = self.blobs.join(&hex);
        self.note(&path, size);
        std::fs::rename(&tmp, &path)?;
        Ok(Descriptor {
            media_type: OCI_LAYER.to_string(),
            digest: format!("sha256:{hex}"),
            size,
        })
    }

    /// An image manifest over `layers` (seed, length) for one platform.
    pub fn image(&mut self, arch: &str, layers: &[(u64, u64)]) -> anyhow::Result<Descriptor> {
        let layers = layers
            .iter()
            .map(|&(seed, len)| self.layer(seed, len))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.digest).collect::<Vec<_>>()},
            "config": {},
        }))?;
        let config = self.blob(OCI_CONFIG, &config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.json(),
            "layers": layers.iter().map(Descriptor::json).collect::<Vec<_>>(),
        }))?;
        self.blob(OCI_MANIFEST, &manifest)
    }

    /// An index over per-platform manifests.
    pub fn index(&mut self, children: &[(&str, Descriptor)]) -> anyhow::Result<Descriptor> {
        let manifests: Vec<Value> = children
            .iter()
            .map(|(arch, d)| {
                let mut v = d.json();
                v["platform"] = json!({"architecture": arch, "os": "linux"});
                v
            })
            .collect();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))?;
        self.blob(OCI_INDEX, &index)
    }

    pub fn tag(&mut self, tag: &str, d: &Descriptor) {
        let mut v = d.json();
        v["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.index.push(v);
    }

    pub fn finish(self) -> anyhow::Result<()> {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.index});
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(())
    }
}

/// A ustar header for one regular file.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// What one image set holds, for turning wall times into rates.
pub struct SetSummary {
    pub tags: Vec<String>,
    pub multiarch: bool,
    /// Bytes and blobs a push transfers (each distinct blob once, manifests included).
    pub unique_bytes: u64,
    pub unique_blobs: u64,
    /// Bytes a pull of every tag transfers (each tag pulled into its own directory).
    pub pull_bytes: u64,
    pub pull_blobs: u64,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The image sets the benchmark pushes and pulls with skopeo:
/// - `large`: one image with a 1 GiB and a 4 MiB layer;
/// - `small`: 8 images of 32 layers each, 4 KiB to 64 KiB, the first 8 shared by all;
/// - `multiarch`: 2 indexes of linux/amd64 + linux/arm64 images with 4 layers of 8 MiB, 2 of
///   them shared by every image.
pub fn make_set(name: &str, dir: &Path) -> anyhow::Result<SetSummary> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let mut layout = Layout::create(dir)?;
    let mut tags = Vec::new();
    let multiarch = name == "multiarch";
    match name {
        "large" => {
            let layers = [(1, 1024 * MIB), (2, 4 * MIB)];
            let d = layout.image("amd64", &layers)?;
            layout.tag("large", &d);
            tags.push("large".to_string());
        }
        "small" => {
            let mut sizes = Noise::new(42);
            let size = |n: &mut Noise| 4 * KIB << (n.next_u64() % 5); // 4 KiB .. 64 KiB
            let base: Vec<(u64, u64)> = (0..8).map(|i| (1000 + i, size(&mut sizes))).collect();
            for img in 0..8u64 {
                let mut layers = base.clone();
                layers.extend((0..24).map(|i| (2000 + img * 100 + i, size(&mut sizes))));
                let d = layout.image("amd64", &layers)?;
                let tag = format!("s{img}");
                layout.tag(&tag, &d);
                tags.push(tag);
            }
        }
        "multiarch" => {
            for img in 0..2u64 {
                let mut children = Vec::new();
                for (p, arch) in ["amd64", "arm64"].into_iter().enumerate() {
                    let p = p as u64;
                    let layers = [
                        (3000, 8 * MIB),
                        (3001, 8 * MIB),
                        (3100 + img * 10 + p * 2, 8 * MIB),
                        (3101 + img * 10 + p * 2, 8 * MIB),
                    ];
                    children.push((arch, layout.image(arch, &layers)?));
                }
                let d = layout.index(&children)?;
                let tag = format!("m{img}");
                layout.tag(&tag, &d);
                tags.push(tag);
            }
        }
        other => anyhow::bail!("unknown image set {other:?} (large, small, multiarch)"),
    }
    let (unique_bytes, unique_blobs) = (layout.unique_bytes, layout.unique_blobs);
    layout.finish()?;
    // Every tag is pulled into a fresh directory: the pull moves each tag's whole closure.
    let (mut pull_bytes, mut pull_blobs) = (0, 0);
    for t in &tags {
        let (bytes, blobs) = closure(dir, t)?;
        pull_bytes += bytes;
        pull_blobs += blobs;
    }
    Ok(SetSummary {
        tags,
        multiarch,
        unique_bytes,
        unique_blobs,
        pull_bytes,
        pull_blobs,
    })
}

/// Bytes and blob count of a tag's manifest and everything it references, each distinct blob
/// once.
pub fn closure(dir: &Path, tag: &str) -> anyhow::Result<(u64, u64)> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let top = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("no tag {tag} in {}", dir.display()))?;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![top.clone()];
    let mut total = 0;
    while let Some(d) = stack.pop() {
        let digest = d["digest"]
            .as_str()
            .context("descriptor without digest")?
            .to_string();
        if !seen.insert(digest.clone()) {
            continue;
        }
        total += d["size"].as_u64().context("descriptor without size")?;
        let mt = d["mediaType"].as_str().unwrap_or_default();
        if mt == OCI_MANIFEST || mt == OCI_INDEX {
            let body: Value = serde_json::from_slice(&std::fs::read(
                dir.join("blobs/sha256").join(&digest["sha256:".len()..]),
            )?)?;
            for key in ["manifests", "layers"] {
                stack.extend(body[key].as_array().into_iter().flatten().cloned());
            }
            if body["config"].is_object() {
                stack.push(body["config"].clone());
            }
        }
    }
    Ok((total, seen.len() as u64))
}

/// The top-level digest of a tag in a layout.
pub fn tag_digest(dir: &Path, tag: &str) -> Option<String> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).ok()?).ok()?;
    index["manifests"]
        .as_array()?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_header_checksum_is_valid() {
        let h = tar_header("layer-1.bin", 12345);
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h;
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|&b| b as u32).sum::<u32>());
        assert_eq!(&h[124..135], format!("{:011o}", 12345).as_bytes());
    }

    #[test]
    fn layouts_are_deterministic_and_content_addressed() {
        let base = std::env::temp_dir().join(format!("regbench-layout-{}", std::process::id()));
        let first = make_set("multiarch", &base.join("a")).unwrap();
        let second = make_set("multiarch", &base.join("b")).unwrap();
        assert_eq!(first.tags, vec!["m0", "m1"]);
        assert!(first.multiarch);
        // 2 shared layers + 2 per platform per index, 4 configs, 4 images, 2 indexes.
        assert_eq!(first.unique_blobs, 2 + 8 + 4 + 4 + 2);
        for tag in &first.tags {
            assert_eq!(
                tag_digest(&base.join("a"), tag),
                tag_digest(&base.join("b"), tag)
            );
        }
        assert_eq!(first.pull_bytes, second.pull_bytes);
        for entry in std::fs::read_dir(base.join("a/blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let data = std::fs::read(entry.path()).unwrap();
            assert_eq!(sha256_hex(&data), entry.file_name().to_string_lossy());
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
