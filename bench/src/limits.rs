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
