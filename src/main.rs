//! The `wharf` command: serve, migrate.

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
    Migrate,
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},sqlx=warn,actix_server=warn,refinery_core=warn",
            config.log.level
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
        Command::Migrate => runtime().and_then(|rt| rt.block_on(migrate(&config))),
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

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let applied = wharf::meta::migrate(&config.database.url).await?;
    tracing::info!(applied, database = %wharf::config::redact_url(&config.database.url), "migrations up to date");
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(async move {
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
            storage = %registry.storage.describe(),
            "wharf is serving"
        );
        wharf::spawn_maintenance(registry.clone(), &config);
        let server = wharf::http_server(registry, listener, config.http.workers, config.log.accesslog)?;
        server.await.context("HTTP server failed")
    })
}
