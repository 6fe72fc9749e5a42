//! Large stores made directly in each registry's own format, because pushing 100k tags or
//! blobs through either API would take longer than the whole benchmark:
//! - Distribution: its storage tree (`docker/registry/v2/blobs/...` and
//!   `repositories/<name>/_manifests|_layers/...` link files);
//! - wharf: rows in its database (the schema its migrations create) and blob files in the
//!   same `blobs/sha256/<2 hex>/<hex>/data` layout.
//!
//! Both stores hold the same repositories, tags, manifests and blobs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use wharf::meta::seed::{SeedManifest, Seeder};

use crate::images::{Noise, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, digest_of, sha256_hex};

/// Distribution's storage tree (also the layout of wharf's blob files).
pub struct Tree {
    v2: PathBuf,
}

impl Tree {
    pub fn new(root: &Path) -> Tree {
        Tree {
            v2: root.join("docker/registry/v2"),
        }
    }

    fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
        if let Err(e) = std::fs::write(path, data) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e.into());
            }
            std::fs::create_dir_all(path.parent().unwrap())?;
            std::fs::write(path, data)?;
        }
        Ok(())
    }

    pub fn blob(&self, digest: &str, data: &[u8]) -> anyhow::Result<()> {
        let hex = &digest["sha256:".len()..];
        Self::write(
            &self
                .v2
                .join("blobs/sha256")
                .join(&hex[..2])
                .join(hex)
                .join("data"),
            data,
        )
    }

    fn link(&self, repo: &str, dir: &str, digest: &str) -> anyhow::Result<()> {
        let hex = &digest["sha256:".len()..];
        let path = self.v2.join("repositories").join(repo).join(dir);
        Self::write(
            &path.join("sha256").join(hex).join("link"),
            digest.as_bytes(),
        )
    }

    pub fn layer_link(&self, repo: &str, digest: &str) -> anyhow::Result<()> {
        self.link(repo, "_layers", digest)
    }

    pub fn revision_link(&self, repo: &str, digest: &str) -> anyhow::Result<()> {
        self.link(repo, "_manifests/revisions", digest)
    }

    pub fn tag(&self, repo: &str, tag: &str, digest: &str) -> anyhow::Result<()> {
        let path = self
            .v2
            .join("repositories")
            .join(repo)
            .join("_manifests/tags")
            .join(tag);
        Self::write(&path.join("current/link"), digest.as_bytes())
    }

    /// Number of blob data files.
    pub fn count_blobs(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        let root = self.v2.join("blobs/sha256");
        if !root.exists() {
            return Ok(0);
        }
        for prefix in std::fs::read_dir(root)? {
            for blob in std::fs::read_dir(prefix?.path())? {
                n += blob?.path().join("data").exists() as usize;
            }
        }
        Ok(n)
    }
}

/// `f(0..n)` on two threads (each index once); the first error wins.
fn for_each_split(n: usize, f: impl Fn(usize) -> anyhow::Result<()> + Sync) -> anyhow::Result<()> {
    std::thread::scope(|scope| {
        let f = &f;
        let halves: Vec<_> = (0..2)
            .map(|part| scope.spawn(move || (part..n).step_by(2).try_for_each(f)))
            .collect();
        halves
            .into_iter()
            .try_for_each(|h| h.join().expect("seeding thread panicked"))
    })
}

/// The manifest row of an image, in wharf's seeding terms.
fn seed_manifest<'a>(
    id: i64,
    repo_id: i64,
    m: &'a Image,
    refs: &'a [&'a str],
    at: i64,
) -> SeedManifest<'a> {
    SeedManifest {
        id,
        repository_id: repo_id,
        digest: &m.digest,
        media_type: OCI_MANIFEST,
        config_digest: Some(&m.blobs[0].0),
        payload: &m.manifest,
        total_size: (m.manifest.len() + m.blobs.iter().map(|b| b.1).sum::<usize>()) as u64,
        created_at: at,
        blobs: refs,
    }
}

/// A small image: config and layers (digest, size), its manifest bytes and digest.
pub struct Image {
    pub blobs: Vec<(String, usize)>,
    pub data: Vec<Vec<u8>>,
    pub manifest: Vec<u8>,
    pub digest: String,
}

impl Image {
    fn new(seed: u64, layers: usize, layer_size: usize) -> Image {
        let layer_data: Vec<Vec<u8>> = (0..layers)
            .map(|k| Noise::bytes(seed * 64 + k as u64, layer_size))
            .collect();
        let layer_digests: Vec<String> = layer_data.iter().map(|d| digest_of(d)).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux", "created": format!("seed-{seed}"),
            "rootfs": {"type": "layers", "diff_ids": layer_digests},
        }))
        .unwrap();
        let config_digest = digest_of(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layer_digests.iter().map(|d| json!({"mediaType": OCI_LAYER, "digest": d, "size": layer_size})).collect::<Vec<_>>(),
        }))
        .unwrap();
        let mut blobs = vec![(config_digest, config.len())];
        blobs.extend(layer_digests.into_iter().map(|d| (d, layer_size)));
        let mut data = vec![config];
        data.extend(layer_data);
        let digest = format!("sha256:{}", sha256_hex(&manifest));
        Image {
            blobs,
            data,
            manifest,
            digest,
        }
    }
}

fn old() -> i64 {
    wharf::meta::now_ms() - 48 * 3600 * 1000
}

/// The listing store: repository `lists/tags` with `size` tags, and `size - 1` more
/// repositories `lists/r000000`... with one tag each, all on one small image.
/// Returns the name of the repository 90% of the way through the catalog.
pub async fn lists(
    dist: &Path,
    wharf_root: &Path,
    wharf_db: &str,
    size: usize,
) -> anyhow::Result<String> {
    let (dist, files) = (Tree::new(dist), Tree::new(wharf_root));
    let img = Arc::new(Image::new(1, 1, 1024));
    let repo_names: Arc<Vec<String>> = Arc::new(
        std::iter::once("lists/tags".to_string())
            .chain((0..size - 1).map(|i| format!("lists/r{i:06}")))
            .collect(),
    );
    // Files on one thread while the rows go in on another.
    let tree = {
        let (img, repo_names) = (img.clone(), repo_names.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for (k, (d, _)) in img.blobs.iter().enumerate() {
                dist.blob(d, &img.data[k])?;
                files.blob(d, &img.data[k])?;
            }
            dist.blob(&img.digest, &img.manifest)?;
            for_each_split(repo_names.len(), |i| {
                let name = &repo_names[i];
                dist.revision_link(name, &img.digest)?;
                for (d, _) in &img.blobs {
                    dist.layer_link(name, d)?;
                }
                if i == 0 {
                    for t in 0..size {
                        dist.tag(name, &format!("t{t:06}"), &img.digest)?;
                    }
                } else {
                    dist.tag(name, "latest", &img.digest)?;
                }
                Ok(())
            })
        })
    };
    let mut rows = Seeder::open(wharf_db).await?;
    let at = old();
    for (d, size) in &img.blobs {
        rows.blob(d, *size as u64, at).await?;
    }
    let refs: Vec<&str> = img.blobs.iter().map(|b| b.0.as_str()).collect();
    for (i, name) in repo_names.iter().enumerate() {
        let id = i as i64 + 1;
        rows.repository(id, name, at).await?;
        for (d, _) in &img.blobs {
            rows.link(id, d, at).await?;
        }
        rows.manifest(&seed_manifest(id, id, &img, &refs, at))
            .await?;
        if i == 0 {
            for t in 0..size {
                rows.tag(id, &format!("t{t:06}"), id, at).await?;
            }
        } else {
            rows.tag(id, "latest", id, at).await?;
        }
    }
    rows.finish().await?;
    tree.await??;
    Ok(format!("lists/r{:06}", (size * 9 / 10).min(size - 2)))
}

pub struct GcStore {
    pub images: usize,
    pub garbage_images: usize,
    /// Blob files Distribution should keep (manifests are blobs there) and wharf should keep.
    pub dist_keep: usize,
    pub wharf_keep: usize,
    pub dist_blobs: usize,
}

pub const GC_LAYERS: usize = 8;

/// The GC store: `blobs / 10` images of a config, 8 layers and a manifest (10 blobs in
/// Distribution's count), in repositories of 100 images. 1% of the images had their manifest
/// deleted (in Distribution: no revision link; in wharf: no manifest row, its blobs queued for
/// review, as a DELETE leaves them); their blobs are the garbage.
pub async fn gc(
    dist: &Path,
    wharf_root: &Path,
    wharf_db: &str,
    blobs: usize,
) -> anyhow::Result<GcStore> {
    let (dist, files) = (Tree::new(dist), Tree::new(wharf_root));
    let images = blobs / (GC_LAYERS + 2);
    let garbage_images = (images / 100).max(1);
    let repos = images.div_ceil(100);
    // Spread garbage over the store rather than put it all at one end.
    let stride = images / garbage_images;
    let is_garbage = move |i: usize| i % stride == 0 && i / stride < garbage_images;
    let repo_of = move |i: usize| (format!("gc/r{:04}", i % repos), (i % repos) as i64 + 1);
    let all: Arc<Vec<Image>> = Arc::new(
        (0..images)
            .map(|i| Image::new(10_000 + i as u64, GC_LAYERS, 1024))
            .collect(),
    );
    // Files on one thread while the rows go in on another.
    let tree = {
        let all = all.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for_each_split(all.len(), |i| {
                let (img, (repo, _)) = (&all[i], repo_of(i));
                for (k, (d, _)) in img.blobs.iter().enumerate() {
                    dist.blob(d, &img.data[k])?;
                    dist.layer_link(&repo, d)?;
                    files.blob(d, &img.data[k])?;
                }
                dist.blob(&img.digest, &img.manifest)?;
                if !is_garbage(i) {
                    dist.revision_link(&repo, &img.digest)?;
                    dist.tag(&repo, &format!("i{i}"), &img.digest)?;
                }
                Ok(())
            })
        })
    };
    let mut rows = Seeder::open(wharf_db).await?;
    let at = old();
    for r in 0..repos {
        rows.repository(r as i64 + 1, &format!("gc/r{r:04}"), at)
            .await?;
    }
    for (i, img) in all.iter().enumerate() {
        let (_, repo_id) = repo_of(i);
        for (d, size) in &img.blobs {
            rows.blob(d, *size as u64, at).await?;
            rows.link(repo_id, d, at).await?;
            if is_garbage(i) {
                rows.blob_review(d, at).await?;
            }
        }
        if !is_garbage(i) {
            let id = i as i64 + 1;
            let refs: Vec<&str> = img.blobs.iter().map(|b| b.0.as_str()).collect();
            rows.manifest(&seed_manifest(id, repo_id, img, &refs, at))
                .await?;
            rows.tag(repo_id, &format!("i{i}"), id, at).await?;
        }
    }
    rows.finish().await?;
    tree.await??;
    let per_image = GC_LAYERS + 1;
    Ok(GcStore {
        images,
        garbage_images,
        dist_blobs: images * (per_image + 1),
        dist_keep: (images - garbage_images) * (per_image + 1),
        wharf_keep: (images - garbage_images) * per_image,
    })
}

/// A Distribution tree to import: `manifests` small images (config and two 4 KiB layers,
/// the first layer shared by every image of a repository) over `manifests / 10`
/// repositories, one tag each. Returns the images as (repository, tag, image).
pub fn import_tree(root: &Path, manifests: usize) -> anyhow::Result<Vec<(String, String, Image)>> {
    let tree = Tree::new(root);
    let mut images = Vec::with_capacity(manifests);
    for i in 0..manifests {
        let repo = format!("import/team{:02}/app{:04}", (i / 10) % 37, i / 10);
        let mut img = Image::new(500_000 + i as u64, 2, 4096);
        // Every image of a repository shares its first layer.
        let shared = Noise::bytes(900_000 + (i / 10) as u64, 4096);
        img.blobs[1] = (digest_of(&shared), 4096);
        img.data[1] = shared;
        img.manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": img.blobs[0].0, "size": img.blobs[0].1},
            "layers": img.blobs[1..].iter().map(|(d, n)| json!({"mediaType": OCI_LAYER, "digest": d, "size": n})).collect::<Vec<_>>(),
        }))?;
        img.digest = format!("sha256:{}", sha256_hex(&img.manifest));
        images.push((repo, format!("v{}", i % 10), img));
    }
    for_each_split(images.len(), |i| {
        let (repo, tag, img) = &images[i];
        for ((digest, _), data) in img.blobs.iter().zip(&img.data) {
            tree.blob(digest, data)?;
            tree.layer_link(repo, digest)?;
        }
        tree.blob(&img.digest, &img.manifest)?;
        tree.revision_link(repo, &img.digest)?;
        tree.tag(repo, tag, &img.digest)
    })?;
    Ok(images)
}
