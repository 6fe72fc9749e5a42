//! The same real client against both registries: skopeo copies every tag of an image set from
//! an OCI layout into the registry, then back out into fresh layouts, and the pulled
//! top-level digests are checked against the source.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::images::{SetSummary, tag_digest};
use crate::out::Out;

/// skopeo's blob-info cache turns later pushes of known blobs into cross-repository mounts;
/// each push phase starts without it.
fn reset_blob_cache() {
    let dir = if unsafe { libc::geteuid() } == 0 {
        "/var/lib/containers/cache".to_string()
    } else {
        let home = std::env::var("HOME").unwrap_or_default();
        std::env::var("XDG_DATA_HOME").unwrap_or(format!("{home}/.local/share"))
            + "/containers/cache"
    };
    let _ = std::fs::remove_file(format!("{dir}/blob-info-cache-v1.boltdb"));
}

fn copy(all: bool, src: &str, dst: &str, log: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "-q", "--preserve-digests"]);
    if all {
        cmd.arg("--all");
    }
    cmd.args([
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        src,
        dst,
    ]);
    let out = cmd
        .output()
        .context("running skopeo (apt-get install skopeo)")?;
    std::fs::write(log, [&out.stdout[..], &out.stderr[..]].concat())?;
    if !out.status.success() {
        bail!(
            "skopeo copy {src} {dst} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Push every tag of the set (one skopeo at a time; skopeo copies layers in parallel), then
/// pull every tag into its own new layout; `rounds` times, each into a repository of its own,
/// keeping the best time of each direction (a single 1 GiB copy on a shared VM is noisy).
pub fn push_pull(
    out: &mut Out,
    host: &str,
    repo: &str,
    layout: &Path,
    set: &SetSummary,
    work: &Path,
    rounds: usize,
) -> anyhow::Result<()> {
    let (mut push, mut pull) = (f64::MAX, f64::MAX);
    for round in 0..rounds {
        let repo = format!("{repo}-{round}");
        let (a, b) = one_round(host, &repo, layout, set, work)?;
        push = push.min(a);
        pull = pull.min(b);
    }
    out.metric("push_MBps", set.unique_bytes as f64 / 1e6 / push, "higher");
    out.metric("pull_MBps", set.pull_bytes as f64 / 1e6 / pull, "higher");
    out.metric("push_blobs_per_s", set.unique_blobs as f64 / push, "higher");
    out.metric("pull_blobs_per_s", set.pull_blobs as f64 / pull, "higher");
    Ok(())
}

/// Copies every tag of the set from `src(tag)` to `dst(tag)`, one skopeo at a time: the wall
/// time.
fn copy_set(
    set: &SetSummary,
    src: impl Fn(&str) -> String,
    dst: impl Fn(&str) -> String,
    log: &Path,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    for tag in &set.tags {
        copy(set.multiarch, &src(tag), &dst(tag), log)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Every tag of the set from its layout into fresh layouts, best of `rounds`: what skopeo
/// itself can do with the bytes of a pull when no registry is in the way.
pub fn local_copy(
    out: &mut Out,
    layout: &Path,
    set: &SetSummary,
    work: &Path,
    rounds: usize,
) -> anyhow::Result<()> {
    let log = work.join("skopeo.log");
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let _ = std::fs::remove_dir_all(work);
        std::fs::create_dir_all(work)?;
        unsafe { libc::sync() };
        let secs = copy_set(
            set,
            |tag| format!("oci:{}:{tag}", layout.display()),
            |tag| format!("oci:{}:{tag}", work.join(tag).display()),
            &log,
        )?;
        best = best.min(secs);
    }
    std::fs::remove_dir_all(work)?;
    out.metric(
        "skopeo_oci_to_oci_MBps",
        set.pull_bytes as f64 / 1e6 / best,
        "info",
    );
    Ok(())
}

/// One push and one pull of the whole set: their wall times.
fn one_round(
    host: &str,
    repo: &str,
    layout: &Path,
    set: &SetSummary,
    work: &Path,
) -> anyhow::Result<(f64, f64)> {
    let log = work.join("skopeo.log");
    reset_blob_cache();
    unsafe { libc::sync() };
    let push = copy_set(
        set,
        |tag| format!("oci:{}:{tag}", layout.display()),
        |tag| format!("docker://{host}/{repo}:{tag}"),
        &log,
    )?;
    let pulled = work.join("pulled");
    let _ = std::fs::remove_dir_all(&pulled);
    std::fs::create_dir_all(&pulled)?;
    unsafe { libc::sync() };
    let pull = copy_set(
        set,
        |tag| format!("docker://{host}/{repo}:{tag}"),
        |tag| format!("oci:{}:{tag}", pulled.join(tag).display()),
        &log,
    )?;
    for tag in &set.tags {
        let (want, got) = (tag_digest(layout, tag), tag_digest(&pulled.join(tag), tag));
        if want.is_none() || want != got {
            bail!("pulled {repo}:{tag} is {got:?}, pushed {want:?}");
        }
    }
    std::fs::remove_dir_all(&pulled)?;
    Ok((push, pull))
}
