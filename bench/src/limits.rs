//! The machine's ceilings for what a registry does with a blob: SHA-256 on one core (with the
//! same crate wharf uses), writing to the store's disk (through the page cache, and durably
//! with fdatasync, which wharf does before acknowledging a blob), and reading it back.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use sha2::{Digest as _, Sha256};

use crate::images::Noise;
use crate::out::Out;

pub fn measure(out: &mut Out, dir: &Path, mib: usize) -> anyhow::Result<()> {
    let buf = Noise::bytes(99, 1 << 20);
    let data: Vec<u8> = buf.repeat(256);
    let mut h = Sha256::new();
    let started = Instant::now();
    for _ in 0..4 {
        h.update(&data);
    }
    std::hint::black_box(h.finalize());
    out.metric(
        "sha256_MBps",
        4.0 * data.len() as f64 / 1e6 / started.elapsed().as_secs_f64(),
        "info",
    );

    std::fs::create_dir_all(dir)?;
    let path = dir.join("limits.tmp");
    let write = |sync: bool| -> anyhow::Result<f64> {
        let _ = std::fs::remove_file(&path);
        let started = Instant::now();
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..mib {
            f.write_all(&buf)?;
        }
        if sync {
            f.sync_data()?;
        }
        Ok(mib as f64 * 1.048576 / started.elapsed().as_secs_f64())
    };
    out.metric("disk_write_fdatasync_MBps", write(true)?, "info");
    out.metric("page_cache_write_MBps", write(false)?, "info");
    let started = Instant::now();
    let mut f = std::fs::File::open(&path)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        let r = f.read(&mut chunk)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    out.metric(
        "page_cache_read_MBps",
        n as f64 / 1e6 / started.elapsed().as_secs_f64(),
        "info",
    );
    std::fs::remove_file(&path)?;
    Ok(())
}

/// Touches the memory the kernel has free, once, before anything is measured. On a VM a page
/// the guest has never touched costs a fault in the host the first time it is written (here:
/// `dd` writes 2 GiB to the page cache at 0.4 GB/s the first time, 2.5-4 GB/s once the pages
/// have been used), so without this whichever scenario first fills the page cache with fresh
/// pages pays for the VM rather than for its registry. Leaves 1 GiB alone. Returns the GiB
/// touched and how fast.
pub fn warm_memory(out: &mut Out) -> anyhow::Result<()> {
    let available_kib: u64 = std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let bytes = (available_kib * 1024).saturating_sub(1 << 30) as usize;
    if bytes == 0 {
        return Ok(());
    }
    let started = Instant::now();
    // Zeroed allocations of this size are fresh mappings: every page is touched below.
    let mut block = vec![0u8; bytes];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&block);
    drop(block);
    let secs = started.elapsed().as_secs_f64();
    out.metric(
        "memory_warmed_GiB",
        bytes as f64 / (1u64 << 30) as f64,
        "info",
    );
    out.metric("memory_first_touch_GBps", bytes as f64 / 1e9 / secs, "info");
    Ok(())
}
