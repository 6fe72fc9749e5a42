//! Results: one tab-separated line per figure in the results file (`label scenario metric
//! value better`), a readable line on stderr, and the server's peak RSS and CPU time over each
//! scenario.

use std::io::Write;
use std::sync::Mutex;

static RESULTS: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Appends every figure from now on to `path`.
pub fn record_to(path: &std::path::Path) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *RESULTS.lock().unwrap() = Some(f);
    Ok(())
}

pub struct Out {
    label: String,
    scenario: String,
    pid: Option<u32>,
    cpu_start: Option<f64>,
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// Peak resident set size in MB since the last reset.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e6)
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0).
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

impl Out {
    pub fn start(label: &str, scenario: &str, pid: Option<u32>) -> Out {
        // Dirty pages a previous scenario left (Distribution never fsyncs) would otherwise be
        // written back during this one, at its expense.
        unsafe { libc::sync() };
        if let Some(pid) = pid {
            reset_peak_rss(pid);
        }
        eprintln!("  {label} {scenario} ...");
        Out {
            label: label.to_string(),
            scenario: scenario.to_string(),
            pid,
            cpu_start: pid.and_then(cpu_seconds),
        }
    }

    /// `better` is "higher", "lower" or "info" (no ratio is computed).
    pub fn metric(&mut self, name: &str, value: f64, better: &str) {
        if let Some(f) = RESULTS.lock().unwrap().as_mut() {
            let _ = writeln!(
                f,
                "{}\t{}\t{name}\t{value:.6}\t{better}",
                self.label, self.scenario
            );
        }
        eprintln!("    {name} = {value:.3}");
    }

    pub fn finish(mut self) {
        if let Some(pid) = self.pid {
            if let (Some(a), Some(b)) = (self.cpu_start, cpu_seconds(pid)) {
                self.metric("server_cpu_s", b - a, "lower");
            }
            if let Some(rss) = peak_rss_mb(pid) {
                self.metric("peak_rss_MB", rss, "lower");
            }
        }
    }
}
