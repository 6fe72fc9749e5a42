//! The side-by-side table: per scenario and metric, wharf's figure, Distribution's, and the
//! ratio oriented so that above 1 means wharf is better (faster, or smaller for times, RSS and
//! CPU).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

struct Row {
    scenario: String,
    metric: String,
    better: String,
    values: BTreeMap<String, f64>,
}

fn load(path: &Path) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 5 {
            continue;
        }
        let value: f64 = f[3].parse()?;
        match rows
            .iter_mut()
            .find(|r| r.scenario == f[1] && r.metric == f[2])
        {
            Some(r) => {
                r.values.insert(f[0].to_string(), value);
            }
            None => rows.push(Row {
                scenario: f[1].to_string(),
                metric: f[2].to_string(),
                better: f[4].to_string(),
                values: BTreeMap::from([(f[0].to_string(), value)]),
            }),
        }
    }
    Ok(rows)
}

fn fmt(v: Option<&f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 0.1 => format!("{v:.2}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn ratio(r: &Row) -> Option<f64> {
    let (w, d) = (r.values.get("wharf")?, r.values.get("distribution")?);
    match r.better.as_str() {
        "higher" if *d > 0.0 => Some(w / d),
        "lower" if *w > 0.0 => Some(d / w),
        _ => None,
    }
}

/// Renders the results as a Markdown table (readable as plain text too).
pub fn render(path: &Path) -> anyhow::Result<String> {
    let rows = load(path)?;
    let mut s = String::new();
    let machine: Vec<&Row> = rows
        .iter()
        .filter(|r| r.values.contains_key("machine"))
        .collect();
    if !machine.is_empty() {
        writeln!(s, "Physical limits of this machine:\n")?;
        writeln!(s, "| limit | MB/s |\n| --- | ---: |")?;
        for r in &machine {
            writeln!(s, "| {} | {} |", r.metric, fmt(r.values.get("machine")))?;
        }
        writeln!(s)?;
    }
    writeln!(
        s,
        "| scenario | metric | wharf | distribution | ratio (>1: wharf better) |\n| --- | --- | ---: | ---: | ---: |"
    )?;
    for r in rows.iter().filter(|r| !r.values.contains_key("machine")) {
        writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.scenario,
            r.metric,
            fmt(r.values.get("wharf")),
            fmt(r.values.get("distribution")),
            ratio(r).map(|x| format!("{x:.2}x")).unwrap_or_default()
        )?;
    }
    // How close the large-blob path comes to what the machine can do.
    let get = |scenario: &str, metric: &str, label: &str| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.metric == metric)
            .and_then(|r| r.values.get(label).copied())
    };
    if let (Some(sha), Some(disk), Some(push)) = (
        get("limits", "sha256_MBps", "machine"),
        get("limits", "disk_write_fdatasync_MBps", "machine"),
        get("fs.raw.big_blob", "push_MBps", "wharf"),
    ) {
        let ceiling = sha.min(disk);
        writeln!(
            s,
            "\nLarge-blob push: wharf {push:.0} MB/s = {:.0}% of min(SHA-256 {sha:.0}, durable disk write {disk:.0}) MB/s.",
            100.0 * push / ceiling
        )?;
    }
    if let (Some(read), Some(pull)) = (
        get("limits", "page_cache_read_MBps", "machine"),
        get("fs.raw.big_blob", "pull_MBps", "wharf"),
    ) {
        writeln!(
            s,
            "Large-blob pull: wharf {pull:.0} MB/s = {:.0}% of a page-cache read ({read:.0} MB/s).",
            100.0 * pull / read
        )?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(better: &str, wharf: f64, distribution: f64) -> Row {
        Row {
            scenario: "s".into(),
            metric: "m".into(),
            better: better.into(),
            values: BTreeMap::from([
                ("wharf".into(), wharf),
                ("distribution".into(), distribution),
            ]),
        }
    }

    #[test]
    fn ratios_read_as_wharf_better_when_above_one() {
        assert_eq!(ratio(&row("higher", 300.0, 100.0)), Some(3.0));
        assert_eq!(ratio(&row("lower", 10.0, 40.0)), Some(4.0));
        assert_eq!(ratio(&row("lower", 40.0, 10.0)), Some(0.25));
        assert_eq!(ratio(&row("info", 1.0, 2.0)), None);
    }

    #[test]
    fn renders_one_row_per_scenario_and_metric() {
        let path = std::env::temp_dir().join(format!("regbench-report-{}.tsv", std::process::id()));
        std::fs::write(
            &path,
            "machine\tlimits\tsha256_MBps\t1500\tinfo\n\
             wharf\tfs.raw.big_blob\tpush_MBps\t300\thigher\n\
             distribution\tfs.raw.big_blob\tpush_MBps\t150\thigher\n\
             wharf\tfs.raw.big_blob\tpeak_rss_MB\t40\tlower\n",
        )
        .unwrap();
        let table = render(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(table.contains("| sha256_MBps | 1500 |"), "{table}");
        assert!(
            table.contains("| fs.raw.big_blob | push_MBps | 300 | 150 | 2.00x |"),
            "{table}"
        );
        assert!(
            table.contains("| fs.raw.big_blob | peak_rss_MB | 40.0 | - |  |"),
            "{table}"
        );
    }
}
