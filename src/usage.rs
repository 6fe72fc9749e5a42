//! `wharf usage` and `GET /admin/usage`: what every repository and namespace costs, from the
//! maintained aggregates (meta/aggregates.rs), and the check of those aggregates against the
//! SQL views that define them (`wharf fsck`).

use serde::Serialize;

use crate::meta::{
    LargestBlob, LargestImage, MetaStore, NamespaceUsage, RegistryUsage, RepositoryUsage,
    UsageFigures,
};

#[derive(Debug, Serialize)]
pub struct UsageReport {
    /// The namespace the report is limited to ("" for the whole registry).
    pub namespace: String,
    pub registry: RegistryUsage,
    pub namespaces: Vec<NamespaceUsage>,
    pub repositories: Vec<RepositoryUsage>,
    pub largest_images: Vec<LargestImage>,
    pub largest_blobs: Vec<LargestBlob>,
}

pub async fn report(meta: &MetaStore, namespace: &str, top: u32) -> anyhow::Result<UsageReport> {
    // Everything committed before the report is in it.
    meta.fold_usage(true).await?;
    Ok(UsageReport {
        namespace: namespace.to_owned(),
        registry: meta.registry_usage().await?,
        namespaces: meta.namespace_usage(namespace).await?,
        repositories: meta.repository_usage(namespace).await?,
        largest_images: meta.largest_images(namespace, top).await?,
        largest_blobs: meta.largest_blobs(top).await?,
    })
}

/// Compares the maintained aggregates with the views (the reference implementation) and
/// names every figure that differs. On a registry taking writes, a write that lands between
/// the two reads looks like a difference: differences are read again after another fold, and
/// only those that persist are reported.
pub async fn check(meta: &MetaStore) -> anyhow::Result<Vec<String>> {
    let mut differences = Vec::new();
    for _ in 0..3 {
        meta.fold_usage(true).await?;
        differences = compare(meta).await?;
        if differences.is_empty() {
            break;
        }
    }
    Ok(differences)
}

async fn compare(meta: &MetaStore) -> anyhow::Result<Vec<String>> {
    use std::collections::BTreeMap;
    let mut out = Vec::new();
    let (kept, reference) = (
        meta.registry_usage().await?,
        meta.reference_registry_usage().await?,
    );
    if kept != reference {
        out.push(format!(
            "registry: kept {kept:?}, edge tables say {reference:?}"
        ));
    }
    let kept: BTreeMap<_, _> = meta
        .repository_usage("")
        .await?
        .into_iter()
        .map(|r| (r.repository, r.figures))
        .collect();
    let reference: BTreeMap<_, _> = meta
        .reference_repository_usage("")
        .await?
        .into_iter()
        .map(|r| (r.repository, r.figures))
        .collect();
    diff_maps("repository", &kept, &reference, &mut out);
    let kept: BTreeMap<_, _> = meta
        .namespace_usage("")
        .await?
        .into_iter()
        .map(|n| (n.namespace, (n.repositories, n.figures)))
        .collect();
    let reference: BTreeMap<_, _> = meta
        .reference_namespace_usage("")
        .await?
        .into_iter()
        .map(|n| (n.namespace, (n.repositories, n.figures)))
        .collect();
    diff_maps("namespace", &kept, &reference, &mut out);
    let (kept, reference) = (
        meta.largest_blobs(20).await?,
        meta.reference_largest_blobs(20).await?,
    );
    if kept != reference {
        out.push(format!(
            "largest blobs: kept {kept:?}, edge tables say {reference:?}"
        ));
    }
    Ok(out)
}

fn diff_maps<V: PartialEq + std::fmt::Debug>(
    what: &str,
    kept: &std::collections::BTreeMap<String, V>,
    reference: &std::collections::BTreeMap<String, V>,
    out: &mut Vec<String>,
) {
    for (name, r) in reference {
        match kept.get(name) {
            Some(k) if k == r => {}
            Some(k) => out.push(format!("{what} {name}: kept {k:?}, edge tables say {r:?}")),
            None => out.push(format!("{what} {name}: not kept, edge tables say {r:?}")),
        }
    }
    for name in kept.keys().filter(|n| !reference.contains_key(*n)) {
        out.push(format!(
            "{what} {name}: kept, but the edge tables know no such {what}"
        ));
    }
}

/// Bytes for people: 1536 → "1.5 KiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn table_row(name: &str, f: &UsageFigures) -> String {
    format!(
        "{:<40} {:>6} {:>9} {:>9} {:>7} {:>12} {:>12} {:>12}\n",
        name,
        f.tags,
        f.manifests,
        f.untagged_manifests,
        f.blobs,
        human(f.logical_size),
        human(f.exclusive_size),
        human(f.shared_size)
    )
}

pub fn table(r: &UsageReport) -> String {
    let mut out = String::new();
    let g = &r.registry;
    out.push_str(&format!(
        "registry: {} repositories, {} manifests, {} tags, {} blobs; stored {} (logical {}, dedup ratio {:.2}); pending GC {}\n",
        g.repositories,
        g.manifests,
        g.tags,
        g.blobs,
        human(g.physical_size),
        human(g.logical_size),
        g.dedup_ratio,
        human(g.pending_gc_size)
    ));
    let header = format!(
        "{:<40} {:>6} {:>9} {:>9} {:>7} {:>12} {:>12} {:>12}\n",
        "NAME", "TAGS", "MANIFESTS", "UNTAGGED", "BLOBS", "LOGICAL", "EXCLUSIVE", "SHARED"
    );
    if !r.namespaces.is_empty() {
        out.push_str("\nnamespaces\n");
        out.push_str(&header);
        for n in &r.namespaces {
            out.push_str(&table_row(&n.namespace, &n.figures));
        }
    }
    out.push_str("\nrepositories\n");
    out.push_str(&header);
    for x in &r.repositories {
        out.push_str(&table_row(&x.repository, &x.figures));
    }
    if !r.largest_images.is_empty() {
        out.push_str("\nlargest images\n");
        for i in &r.largest_images {
            out.push_str(&format!(
                "{:>12}  {}:{}  {}\n",
                human(i.size),
                i.repository,
                i.tag,
                i.digest
            ));
        }
    }
    if !r.largest_blobs.is_empty() {
        out.push_str("\nlargest blobs\n");
        for b in &r.largest_blobs {
            out.push_str(&format!(
                "{:>12}  {}  in {} repositories\n",
                human(b.size),
                b.digest,
                b.repositories
            ));
        }
    }
    out
}

fn csv_row(kind: &str, name: &str, repositories: u64, f: &UsageFigures) -> String {
    format!(
        "{kind},{name},{repositories},{},{},{},{},{},{},{},{},{}\n",
        f.tags,
        f.manifests,
        f.tagged_manifests,
        f.untagged_manifests,
        f.blobs,
        f.logical_size,
        f.exclusive_size,
        f.shared_size,
        f.last_push_ms.map(|t| t.to_string()).unwrap_or_default()
    )
}

/// One CSV row per namespace and per repository (kind,name,...), sizes in bytes.
pub fn csv(r: &UsageReport) -> String {
    let mut out = String::from(
        "kind,name,repositories,tags,manifests,tagged_manifests,untagged_manifests,blobs,logical_size,exclusive_size,shared_size,last_push_ms\n",
    );
    for n in &r.namespaces {
        out.push_str(&csv_row(
            "namespace",
            &n.namespace,
            n.repositories,
            &n.figures,
        ));
    }
    for x in &r.repositories {
        out.push_str(&csv_row("repository", &x.repository, 1, &x.figures));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(512), "512 B");
        assert_eq!(super::human(1536), "1.5 KiB");
        assert_eq!(super::human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn namespaces_are_proper_prefixes() {
        let n: Vec<_> = crate::meta::namespaces_of("team/app/web").collect();
        assert_eq!(n, ["team", "team/app"]);
        assert_eq!(crate::meta::namespaces_of("solo").count(), 0);
    }
}
