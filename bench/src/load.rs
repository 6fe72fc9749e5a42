//! Load over the raw registry API: concurrent small-blob pushes and GETs, one large blob pushed
//! and pulled, many clients pulling one image, and listing latency. Each scenario checks what
//! it gets back (status codes, lengths, counts): a fast wrong answer is not a result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::images::{Noise, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, digest_of};
use crate::out::Out;

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Clone)]
pub struct Target {
    base: String,
    client: reqwest::Client,
}

impl Target {
    pub fn new(base: &str) -> anyhow::Result<Target> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(600))
            .build()?;
        Ok(Target {
            base: base.trim_end_matches('/').to_string(),
            client,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST an upload; the absolute URL of its Location.
    async fn start_upload(&self, repo: &str) -> anyhow::Result<String> {
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await?;
        ensure!(r.status() == 202, "POST upload: {}", r.status());
        self.location(&r)
    }

    /// The response's Location, made absolute.
    fn location(&self, r: &reqwest::Response) -> anyhow::Result<String> {
        let loc = r
            .headers()
            .get("location")
            .context("response without Location")?
            .to_str()?;
        Ok(if loc.starts_with('/') {
            self.url(loc)
        } else {
            loc.to_string()
        })
    }

    fn with_digest(loc: &str, digest: &str) -> String {
        let sep = if loc.contains('?') { '&' } else { '?' };
        format!("{loc}{sep}digest={digest}")
    }

    /// A blob in two requests: POST, then PUT with the body (what clients do for small blobs).
    pub async fn push_blob(&self, repo: &str, data: Bytes) -> anyhow::Result<String> {
        let digest = digest_of(&data);
        let loc = self.start_upload(repo).await?;
        self.put_blob(&loc, &digest, data).await?;
        Ok(digest)
    }

    /// The closing PUT of an upload session at `loc`, carrying `data` (may be empty).
    async fn put_blob(&self, loc: &str, digest: &str, data: Bytes) -> anyhow::Result<()> {
        let r = self
            .client
            .put(Self::with_digest(loc, digest))
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await?;
        ensure!(r.status() == 201, "PUT blob: {}", r.status());
        Ok(())
    }

    /// A blob in one request, `POST ?digest=` with the body, where the registry takes that
    /// (201); otherwise the session it opened (202) gets the body in a PUT, as a client would.
    pub async fn push_blob_monolithic(&self, repo: &str, data: Bytes) -> anyhow::Result<String> {
        let digest = digest_of(&data);
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.clone())
            .send()
            .await?;
        match r.status().as_u16() {
            201 => Ok(digest),
            202 => {
                self.put_blob(&self.location(&r)?, &digest, data).await?;
                Ok(digest)
            }
            s => bail!("POST ?digest=: {s}"),
        }
    }

    /// A blob in `chunk`-byte PATCHes with `Content-Range`, then an empty PUT.
    pub async fn push_blob_chunked(
        &self,
        repo: &str,
        data: Bytes,
        digest: &str,
        chunk: usize,
    ) -> anyhow::Result<()> {
        let mut loc = self.start_upload(repo).await?;
        let mut pos = 0;
        while pos < data.len() {
            let end = (pos + chunk).min(data.len());
            let r = self
                .client
                .patch(&loc)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{pos}-{}", end - 1))
                .body(data.slice(pos..end))
                .send()
                .await?;
            ensure!(r.status() == 202, "PATCH at {pos}: {}", r.status());
            loc = self.location(&r)?;
            pos = end;
        }
        self.put_blob(&loc, digest, Bytes::new()).await
    }

    /// A blob in three requests: POST, one streamed PATCH, PUT (what docker and skopeo do).
    pub async fn push_blob_patch(&self, repo: &str, data: Bytes) -> anyhow::Result<String> {
        let digest = digest_of(&data);
        self.push_blob_patch_known(repo, data, &digest).await?;
        Ok(digest)
    }

    /// The same, for a blob whose digest the client knows already (as a client pushing an
    /// image does: it is in the manifest).
    pub async fn push_blob_patch_known(
        &self,
        repo: &str,
        data: Bytes,
        digest: &str,
    ) -> anyhow::Result<()> {
        let loc = self.start_upload(repo).await?;
        let r = self
            .client
            .patch(&loc)
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await?;
        ensure!(r.status() == 202, "PATCH blob: {}", r.status());
        let loc = self.location(&r)?;
        self.put_blob(&loc, digest, Bytes::new()).await
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<()> {
        let r = self
            .client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", media_type)
            .body(body)
            .send()
            .await?;
        ensure!(r.status() == 201, "PUT manifest: {}", r.status());
        Ok(())
    }

    /// GET, reading and dropping the body; the number of body bytes.
    async fn get_discard(&self, path: &str, accept: Option<&str>) -> anyhow::Result<u64> {
        let mut req = self.client.get(self.url(path));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await?;
        ensure!(r.status() == 200, "GET {path}: {}", r.status());
        let mut n = 0;
        let mut body = r.bytes_stream();
        while let Some(chunk) = body.next().await {
            n += chunk?.len() as u64;
        }
        Ok(n)
    }

    async fn get_bytes(&self, path: &str) -> anyhow::Result<Bytes> {
        let r = self.client.get(self.url(path)).send().await?;
        ensure!(r.status() == 200, "GET {path}: {}", r.status());
        Ok(r.bytes().await?)
    }

    async fn get_json(&self, path: &str, accept: Option<&str>) -> anyhow::Result<(Value, usize)> {
        let mut req = self.client.get(self.url(path));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await?;
        ensure!(r.status() == 200, "GET {path}: {}", r.status());
        let body = r.bytes().await?;
        Ok((serde_json::from_slice(&body)?, body.len()))
    }
}

/// A tag list or catalog page.
#[derive(serde::Deserialize)]
struct Listing<'a> {
    #[serde(borrow, default)]
    tags: Option<Vec<&'a str>>,
    #[serde(borrow, default)]
    repositories: Option<Vec<&'a str>>,
}

/// Latencies in seconds.
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn quantile(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
    }
}

pub struct RunResult {
    pub ops: u64,
    pub bytes: u64,
    pub wall: f64,
    pub latencies: Samples,
}

/// Runs `op(worker, i)` in `workers` concurrent loops until `secs` have passed (and at least
/// `min_ops` operations completed, at most `max_ops`). Any failure ends the run with an error.
pub async fn run_for<F, Fut>(
    workers: usize,
    secs: f64,
    min_ops: u64,
    max_ops: u64,
    op: F,
) -> anyhow::Result<RunResult>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (op, done) = (op.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut bytes = 0;
            let mut i = 0;
            loop {
                let n = done.load(Ordering::Relaxed);
                if n >= max_ops || (Instant::now() >= deadline && n >= min_ops) {
                    break;
                }
                let t = Instant::now();
                bytes += op(w, i).await?;
                lat.push(t.elapsed().as_secs_f64());
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok((lat, bytes))
        }));
    }
    let mut all = Vec::new();
    let mut bytes = 0;
    for t in tasks {
        let (lat, b) = t.await??;
        all.extend(lat);
        bytes += b;
    }
    Ok(RunResult {
        ops: all.len() as u64,
        bytes,
        wall: started.elapsed().as_secs_f64(),
        latencies: Samples(all),
    })
}

/// How a small blob is pushed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// POST, then PUT with the body.
    PostPut,
    /// One `POST ?digest=` with the body (POST + PUT where the registry does not take it).
    Monolithic,
}

/// Distinct small blobs pushed by `workers` clients.
#[allow(clippy::too_many_arguments)]
pub async fn push_small(
    t: &Target,
    out: &mut Out,
    repo: &str,
    size: usize,
    workers: usize,
    secs: f64,
    salt: u64,
    how: Push,
) -> anyhow::Result<()> {
    let (t2, repo2) = (t.clone(), repo.to_string());
    let r = run_for(workers, secs, 50, u64::MAX, move |w, i| {
        let (t, repo) = (t2.clone(), repo2.clone());
        async move {
            let seed = salt ^ ((w as u64) << 40) ^ i;
            let data = Bytes::from(Noise::bytes(seed, size));
            match how {
                Push::PostPut => t.push_blob(&repo, data).await?,
                Push::Monolithic => t.push_blob_monolithic(&repo, data).await?,
            };
            Ok(size as u64)
        }
    })
    .await?;
    out.metric("blobs_per_s", r.ops as f64 / r.wall, "higher");
    if how == Push::PostPut {
        out.metric("requests_per_s", 2.0 * r.ops as f64 / r.wall, "higher");
    }
    out.metric("p50_ms", r.latencies.quantile(0.5) * 1e3, "lower");
    out.metric("p99_ms", r.latencies.quantile(0.99) * 1e3, "lower");
    Ok(())
}

/// `count` small blobs pushed first, then fetched at random by `workers` clients.
#[allow(clippy::too_many_arguments)]
pub async fn get_small(
    t: &Target,
    out: &mut Out,
    repo: &str,
    size: usize,
    count: usize,
    workers: usize,
    secs: f64,
    salt: u64,
) -> anyhow::Result<()> {
    let mut digests = Vec::new();
    for chunk in (0..count as u64).collect::<Vec<_>>().chunks(16) {
        let pushes = chunk
            .iter()
            .map(|&i| t.push_blob(repo, Bytes::from(Noise::bytes(salt ^ (1 << 50) ^ i, size))));
        for d in futures_util::future::join_all(pushes).await {
            digests.push(d?);
        }
    }
    let digests = Arc::new(digests);
    let (t2, repo2) = (t.clone(), repo.to_string());
    let r = run_for(workers, secs, 100, u64::MAX, move |w, i| {
        let (t, repo, digests) = (t2.clone(), repo2.clone(), digests.clone());
        async move {
            let d =
                &digests[(Noise::new((w as u64) << 32 | i).next_u64() as usize) % digests.len()];
            let n = t
                .get_discard(&format!("/v2/{repo}/blobs/{d}"), None)
                .await?;
            ensure!(n == size as u64, "short blob: {n} bytes");
            Ok(n)
        }
    })
    .await?;
    out.metric("requests_per_s", r.ops as f64 / r.wall, "higher");
    out.metric("p50_ms", r.latencies.quantile(0.5) * 1e3, "lower");
    out.metric("p99_ms", r.latencies.quantile(0.99) * 1e3, "lower");
    Ok(())
}

/// One large blob: pushed in one streamed PATCH, then pulled (best of two).
pub async fn big(
    t: &Target,
    out: &mut Out,
    repo: &str,
    size: usize,
    salt: u64,
) -> anyhow::Result<()> {
    // Digests are computed before the clock starts: a client pushing an image has them.
    let data = Bytes::from(Noise::bytes(salt ^ (2 << 50), size));
    let digest = digest_of(&data);
    let started = Instant::now();
    t.push_blob_patch_known(repo, data, &digest).await?;
    let push = started.elapsed().as_secs_f64();
    out.metric("push_MBps", size as f64 / 1e6 / push, "higher");
    let mut best = f64::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        let n = t
            .get_discard(&format!("/v2/{repo}/blobs/{digest}"), None)
            .await?;
        ensure!(n == size as u64, "pulled {n} of {size} bytes");
        best = best.min(started.elapsed().as_secs_f64());
    }
    out.metric("pull_MBps", size as f64 / 1e6 / best, "higher");
    // Another blob of the same size in 1 MiB PATCHes with Content-Range (what a client with
    // a chunk size does, and where the cost per request shows).
    let data = Bytes::from(Noise::bytes(salt ^ (3 << 50), size));
    let digest = digest_of(&data);
    let started = Instant::now();
    t.push_blob_chunked(repo, data, &digest, 1 << 20).await?;
    out.metric(
        "push_1MiB_chunks_MBps",
        size as f64 / 1e6 / started.elapsed().as_secs_f64(),
        "higher",
    );
    Ok(())
}

/// One blob of `size` bytes GET whole, over and over, by `workers` connections.
pub async fn get_large(
    t: &Target,
    out: &mut Out,
    repo: &str,
    size: usize,
    workers: usize,
    secs: f64,
    salt: u64,
) -> anyhow::Result<()> {
    let digest = t
        .push_blob_patch(repo, Bytes::from(Noise::bytes(salt ^ (4 << 50), size)))
        .await?;
    let (t2, path) = (t.clone(), format!("/v2/{repo}/blobs/{digest}"));
    let r = run_for(workers, secs, workers as u64, u64::MAX, move |_, _| {
        let (t, path) = (t2.clone(), path.clone());
        async move {
            let n = t.get_discard(&path, None).await?;
            ensure!(n == size as u64, "pulled {n} of {size} bytes");
            Ok(n)
        }
    })
    .await?;
    out.metric("MBps", r.bytes as f64 / 1e6 / r.wall, "higher");
    out.metric("p50_ms", r.latencies.quantile(0.5) * 1e3, "lower");
    Ok(())
}

/// An image of `layers` layers of `layer_size` bytes under tag `pull`, then `workers` clients
/// each pulling it whole (manifest, config, layers) over and over.
pub async fn pulls(
    t: &Target,
    out: &mut Out,
    repo: &str,
    layers: usize,
    layer_size: usize,
    workers: usize,
    secs: f64,
) -> anyhow::Result<()> {
    let mut descs = Vec::new();
    for l in 0..layers {
        let data = Bytes::from(Noise::bytes(7000 + l as u64, layer_size));
        let digest = t.push_blob_patch(repo, data).await?;
        descs.push(json!({"mediaType": OCI_LAYER, "digest": digest, "size": layer_size}));
    }
    let config = serde_json::to_vec(
        &json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}),
    )?;
    let config_len = config.len();
    let config_digest = t.push_blob(repo, Bytes::from(config)).await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_len},
        "layers": descs,
    }))?;
    t.put_manifest(repo, "pull", OCI_MANIFEST, manifest).await?;
    let expected = (layers * layer_size + config_len) as u64;
    let (t2, repo2) = (t.clone(), repo.to_string());
    let r = run_for(workers, secs, workers as u64, u64::MAX, move |_, _| {
        let (t, repo) = (t2.clone(), repo2.clone());
        async move {
            let (m, len) = t
                .get_json(&format!("/v2/{repo}/manifests/pull"), Some(ACCEPT))
                .await?;
            let mut n = len as u64;
            let mut blobs: Vec<String> = vec![m["config"]["digest"].as_str().unwrap_or("").into()];
            for l in m["layers"].as_array().context("manifest without layers")? {
                blobs.push(l["digest"].as_str().unwrap_or("").into());
            }
            let mut got = 0;
            for d in blobs {
                got += t
                    .get_discard(&format!("/v2/{repo}/blobs/{d}"), None)
                    .await?;
            }
            ensure!(got == expected, "pulled {got} of {expected} bytes");
            n += got;
            Ok(n)
        }
    })
    .await?;
    out.metric("pulls_per_s", r.ops as f64 / r.wall, "higher");
    out.metric("MBps", r.bytes as f64 / 1e6 / r.wall, "higher");
    out.metric("p50_s", r.latencies.quantile(0.5), "lower");
    out.metric("p99_s", r.latencies.quantile(0.99), "lower");
    Ok(())
}

/// Sequential GETs of a listing; checks that the number of entries under `key` is one of
/// `expect` (a registry that ignores `n` answers with everything).
pub async fn list(
    t: &Target,
    out: &mut Out,
    path: &str,
    key: &str,
    expect: &[usize],
    workers: usize,
    secs: f64,
) -> anyhow::Result<()> {
    let (t2, path2, key2, expect2) = (
        t.clone(),
        path.to_string(),
        key.to_string(),
        expect.to_vec(),
    );
    let entries = Arc::new(AtomicU64::new(0));
    let seen = entries.clone();
    let r = run_for(workers, secs, 5, 2000, move |_, _| {
        let (t, path, key, expect, seen) = (
            t2.clone(),
            path2.clone(),
            key2.clone(),
            expect2.clone(),
            seen.clone(),
        );
        async move {
            let body = t.get_bytes(&path).await?;
            // Parsed in full, strings borrowed: the client's share of the two cores stays small.
            let listing: Listing = serde_json::from_slice(&body)?;
            let names = match key.as_str() {
                "tags" => listing.tags,
                _ => listing.repositories,
            };
            let (n, len) = (names.map_or(0, |v| v.len()), body.len());
            if !expect.contains(&n) {
                bail!("GET {path}: {n} {key}, expected one of {expect:?}");
            }
            seen.store(n as u64, Ordering::Relaxed);
            Ok(len as u64)
        }
    })
    .await?;
    out.metric("p50_ms", r.latencies.quantile(0.5) * 1e3, "lower");
    out.metric("p99_ms", r.latencies.quantile(0.99) * 1e3, "lower");
    out.metric(
        "entries_returned",
        entries.load(Ordering::Relaxed) as f64,
        "info",
    );
    out.metric("requests", r.ops as f64, "info");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_observed_values() {
        let s = Samples((1..=100).map(f64::from).collect());
        assert_eq!(s.quantile(0.5), 50.0);
        assert_eq!(s.quantile(0.99), 99.0);
        assert_eq!(Samples(vec![7.0]).quantile(0.99), 7.0);
    }
}
