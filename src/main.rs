//! The `wharf` command: serve, migrate, gc, usage, import, fsck.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use wharf::config::Config;

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "An OCI registry whose garbage collection is a SQL query"
)]
struct Cli {
    /// YAML configuration file. Without one, defaults apply (listen on 0.0.0.0:5000, data
    /// under ./data); REGISTRY_* / WHARF_* environment variables override any key.
    #[arg(long, short, global = true, env = "WHARF_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve,
    /// Apply database migrations and exit (serve applies them too).
    Migrate {
        /// List applied and pending migrations; change nothing.
        #[arg(long)]
        status: bool,
    },
    /// Collect garbage once, online (the server may keep running): untagged manifests,
    /// unreferenced blob links and blobs older than gc.graceperiod.
    Gc {
        /// List what would be deleted, and the bytes it would free; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Examine only what events queued for review (what the server does between full
        /// passes) instead of every row.
        #[arg(long, conflicts_with = "dry_run")]
        queue: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What every repository and namespace costs: logical, exclusive and shared sizes, and
    /// the registry's stored bytes, deduplication ratio and bytes pending GC.
    Usage {
        /// Only this namespace (path prefix, e.g. `team` or `team/app`) and what is below it.
        #[arg(long, default_value = "")]
        namespace: String,
        /// How many of the largest images and blobs to list.
        #[arg(long, default_value_t = 10)]
        top: u32,
        #[arg(long, value_parser = ["table", "json", "csv"], default_value = "table")]
        format: String,
    },
    /// Adopt a CNCF Distribution (registry:2 / registry:3) storage tree in place: point
    /// wharf's storage at Distribution's (same keys) and its repositories, blobs, manifests
    /// and tags become wharf's, with no byte copied. Re-runnable; resumes where it stopped.
    Import {
        /// Read the tree and report what would be imported and what is broken; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only repositories matching PATTERN (`team/*`: one level, `team/**`: any depth).
        #[arg(long, value_name = "PATTERN")]
        repositories: Option<String>,
        /// Repositories imported at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Hash every blob and compare it with its digest (reads every byte).
        #[arg(long)]
        verify: bool,
        /// Read every repository again, also those an earlier run finished.
        #[arg(long)]
        again: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare storage with the database: orphaned objects, rows whose object is missing.
    Fsck {
        /// Delete orphaned objects older than an hour.
        #[arg(long)]
        delete_orphans: bool,
        /// Record blobs whose object is missing or damaged as lost: clients are then told the
        /// blob is not stored and push it again, which restores it.
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},sqlx=warn,actix_server=warn,refinery_core=warn",
            config.log.level
        ))
    });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if config.log.formatter == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wharf: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let result = match cli.command {
        Command::Serve => serve(config),
        Command::Migrate { status } => {
            runtime().and_then(|rt| rt.block_on(migrate(&config, status)))
        }
        Command::Gc {
            dry_run,
            queue,
            json,
        } => runtime().and_then(|rt| rt.block_on(gc(&config, dry_run, queue, json))),
        Command::Usage {
            namespace,
            top,
            format,
        } => runtime().and_then(|rt| rt.block_on(usage(&config, &namespace, top, &format))),
        Command::Import {
            dry_run,
            repositories,
            concurrency,
            verify,
            again,
            json,
        } => {
            use std::io::IsTerminal;
            let options = wharf::import::Options {
                dry_run,
                repositories,
                concurrency,
                verify,
                again,
                progress: !json && std::io::stderr().is_terminal(),
            };
            runtime().and_then(|rt| rt.block_on(import(&config, &options, json)))
        }
        Command::Fsck {
            delete_orphans,
            repair,
            json,
        } => runtime().and_then(|rt| rt.block_on(fsck(&config, delete_orphans, repair, json))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn migrate(config: &Config, status: bool) -> anyhow::Result<()> {
    if status {
        let s = wharf::meta::migration_status(&config.database.url).await?;
        for m in &s.applied {
            let mark = if s.unknown.contains(m) {
                "applied (unknown to this wharf)"
            } else {
                "applied"
            };
            println!("V{:<4} {:<32} {mark}", m.version, m.name);
        }
        for m in &s.pending {
            println!("V{:<4} {:<32} pending", m.version, m.name);
        }
        println!(
            "{} applied, {} pending{}",
            s.applied.len(),
            s.pending.len(),
            if s.unknown.is_empty() {
                String::new()
            } else {
                format!(", {} newer than this wharf", s.unknown.len())
            }
        );
        return Ok(());
    }
    let applied = wharf::meta::migrate(&config.database.url).await?;
    tracing::info!(applied, database = %wharf::config::redact_url(&config.database.url), "migrations up to date");
    Ok(())
}

async fn import(
    config: &Config,
    options: &wharf::import::Options,
    json: bool,
) -> anyhow::Result<()> {
    let registry = wharf::open_registry(config).await?;
    let report = wharf::import::run(&registry, options).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for p in &report.problems {
        println!("{:<24} {}: {}", p.kind, p.path, p.detail);
    }
    let verb = if report.dry_run {
        "would import"
    } else {
        "imported"
    };
    println!(
        "{verb} {} of {} repositories ({} done by an earlier run): {} manifests, {} tags, {} blob links, {} blobs ({} bytes) in {} ms",
        report.repositories_imported,
        report.repositories,
        report.repositories_already_imported,
        report.manifests,
        report.tags,
        report.blob_links,
        report.blobs,
        report.blob_bytes,
        report.elapsed_ms
    );
    println!(
        "{} problems (skipped); {} unfinished uploads left alone; {} objects ({} bytes) no link or manifest reaches, left alone (`wharf fsck --delete-orphans` removes them once Distribution is retired)",
        report.problems.len(),
        report.leftover_uploads,
        report.unreached_objects,
        report.unreached_bytes
    );
    Ok(())
}

async fn gc(config: &Config, dry_run: bool, queue: bool, json: bool) -> anyhow::Result<()> {
    let registry = wharf::open_registry(config).await?;
    let policy = wharf::meta::GcPolicy::with_grace(config.gc.graceperiod, config.gc.deleteuntagged);
    let mode = if queue {
        wharf::gc::Mode::Queue
    } else {
        wharf::gc::Mode::Full
    };
    let report = registry.collect_garbage(policy, mode, dry_run).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    for m in &report.manifests {
        println!("manifest {}@{} ({} bytes)", m.repository, m.digest, m.size);
    }
    for b in &report.blobs {
        println!("blob {} ({} bytes)", b.digest, b.size);
    }
    println!(
        "{verb} {} manifests, {} blob links, {} blobs; {} bytes freed; {} candidates examined in {} ms",
        report.manifests_deleted,
        report.links_deleted,
        report.blobs_deleted,
        report.bytes_freed,
        report.candidates_examined,
        report.duration_ms
    );
    Ok(())
}

async fn usage(config: &Config, namespace: &str, top: u32, format: &str) -> anyhow::Result<()> {
    let meta =
        wharf::meta::MetaStore::open(&config.database.url, config.database.maxconnections).await?;
    let report = wharf::usage::report(&meta, namespace.trim_end_matches('/'), top).await?;
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&report)?),
        "csv" => print!("{}", wharf::usage::csv(&report)),
        _ => print!("{}", wharf::usage::table(&report)),
    }
    Ok(())
}

async fn fsck(
    config: &Config,
    delete_orphans: bool,
    repair: bool,
    json: bool,
) -> anyhow::Result<()> {
    let registry = wharf::open_registry(config).await?;
    let report = registry
        .fsck_with(wharf::fsck::FsckOptions {
            delete_orphans,
            min_age: std::time::Duration::from_secs(3600),
            repair,
        })
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for b in &report.orphans {
            println!("orphan  {} ({} bytes)", b.digest, b.size);
        }
        for b in &report.missing {
            println!("MISSING {} ({} bytes recorded)", b.digest, b.size);
        }
        for b in &report.size_mismatch {
            println!("SIZE    {} (object has {} bytes)", b.digest, b.size);
        }
        for d in &report.usage_differences {
            println!("USAGE   {d}");
        }
        if report.usage_rebuilt {
            println!("usage aggregates rebuilt from the edge tables");
        }
        println!(
            "{} objects, {} rows: {} orphans ({} deleted), {} missing, {} size mismatches ({} recorded as lost), {} pending GC deletion",
            report.objects,
            report.rows,
            report.orphans.len(),
            report.orphans_deleted,
            report.missing.len(),
            report.size_mismatch.len(),
            report.marked_lost,
            report.pending_deletion
        );
    }
    anyhow::ensure!(
        report.missing.is_empty() && report.size_mismatch.is_empty(),
        "storage and database disagree: objects are missing or damaged (see above). \
         Run `wharf fsck --repair` so that clients push them again, or push the images again"
    );
    anyhow::ensure!(
        report.usage_differences.is_empty() || report.usage_rebuilt,
        "the usage aggregates disagree with the edge tables (see USAGE above). \
         Run `wharf fsck --repair` to rebuild them"
    );
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        wharf::metrics::install();
        let options = wharf::ServerOptions::from_config(&config)?;
        if let Some((_, cert)) = &options.tls {
            // SIGHUP reloads the certificate (it is also reloaded when its files change).
            let cert = cert.clone();
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot listen for SIGHUP")?;
            actix_web::rt::spawn(async move {
                while hup.recv().await.is_some() {
                    cert.reload();
                }
            });
        }
        let registry = Arc::new(wharf::open_registry(&config).await?);
        let listener = TcpListener::bind(&config.http.addr).with_context(|| {
            format!(
                "cannot listen on {}: is another registry running there? Set http.addr (or REGISTRY_HTTP_ADDR)",
                config.http.addr
            )
        })?;
        tracing::info!(
            addr = %config.http.addr,
            database = %wharf::config::redact_url(&config.database.url),
            storage = %registry.describe_storage(),
            "wharf is serving"
        );
        if let Some(debug) = &config.http.debug {
            let listener = TcpListener::bind(&debug.addr).with_context(|| {
                format!("cannot listen on http.debug.addr {} (metrics)", debug.addr)
            })?;
            let addr = debug.addr.as_str();
            tracing::info!(addr, "metrics at /metrics on the debug listener");
            actix_web::rt::spawn(wharf::debug_server(registry.clone(), listener)?);
        }
        wharf::spawn_maintenance(registry.clone(), &config);
        if config.gc.enabled && config.storage.maintenance.readonly.enabled {
            tracing::info!("read-only mode: the background garbage collector is paused");
        } else if config.gc.enabled {
            wharf::gc::spawn(registry.clone(), config.gc.clone());
        }
        let drain = options.drain_timeout;
        let registry_for_jobs = registry.clone();
        let listener_fd = std::os::unix::io::AsRawFd::as_raw_fd(&listener);
        let server = wharf::http_server(registry, options, listener)?;
        let handle = server.handle();
        actix_web::rt::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) =
                (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                tracing::error!("cannot listen for SIGTERM/SIGINT; stop wharf with SIGKILL");
                return;
            };
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(
                signal = which,
                drain_secs = drain.as_secs(),
                "stopping: no new connections; requests in flight may finish"
            );
            // Stop accepting, and refuse new connections at once (a load balancer then moves
            // on to another replica) while the workers keep running: a request in flight may
            // use a database or S3 connection that another worker opened, which must outlive
            // it. Stop the workers only once nothing is in flight, or at the deadline.
            handle.pause().await;
            // The pause is acknowledged before the accept thread has acted on it; let it
            // deregister the listener first, or it would see the shutdown as an accept error.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            // SAFETY: shutdown(2) on the listening socket the server owns; it stays open.
            unsafe { libc::shutdown(listener_fd, libc::SHUT_RD) };
            let started = std::time::Instant::now();
            while wharf::requests_in_flight() > 0 && started.elapsed() < drain {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let left = wharf::requests_in_flight();
            if left > 0 {
                tracing::warn!(requests = left, "drain timeout: stopping with requests in flight");
            }
            handle.stop(left == 0).await;
        });
        server.await.context("HTTP server failed")?;
        registry_for_jobs.release_jobs().await;
        tracing::info!("wharf stopped");
        Ok(())
    })
}
