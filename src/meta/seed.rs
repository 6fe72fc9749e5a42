//! Bulk rows for benchmarks and scale tests: the one place outside the table modules that
//! knows the table layout, so a schema change touches the migrations, the table modules and
//! this file. PostgreSQL gets `COPY … FROM STDIN` through a connection of its own, with
//! triggers and foreign-key checks off (`session_replication_role = replica`, when the user
//! may set it); SQLite gets prepared many-row inserts in one transaction, with
//! `synchronous = OFF`. Fast, and not for a registry that is serving.
//!
//! The usage aggregates are not written row by row: `finish` marks them unbuilt, and the next
//! fold (or `MetaStore::open`) rebuilds them from the edge tables in one pass.

use std::fmt::Write as _;

use anyhow::Context;
use bytes::Bytes;
use futures_util::SinkExt;
use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::{Any, Arguments, Executor};

use super::repositories::namespaces_of;

enum Value {
    Int(i64),
    Text(String),
    OptText(Option<String>),
    Bytes(Vec<u8>),
}

/// Tables in foreign-key order, with the columns seeded.
const TABLES: &[(&str, &str)] = &[
    ("repositories", "id, name, created_at"),
    ("repository_namespaces", "namespace, repository_id"),
    ("blobs", "digest, size, status, created_at"),
    ("repository_blobs", "repository_id, blob_digest, created_at"),
    (
        "manifests",
        "id, repository_id, digest, media_type, config_digest, payload, total_size, created_at",
    ),
    ("manifest_blobs", "manifest_id, repository_id, blob_digest"),
    ("tags", "repository_id, name, manifest_id, updated_at"),
    ("gc_blob_reviews", "blob_digest, due"),
    ("gc_manifest_reviews", "manifest_id, due"),
];

/// Rows buffered per table and flushed many to a statement.
const FLUSH_VALUES: usize = 200_000;
const ROWS_PER_STATEMENT: usize = 500;

struct Table {
    name: &'static str,
    columns: &'static str,
    width: usize,
    values: Vec<Value>,
}

/// A manifest row and its blob edges.
pub struct SeedManifest<'a> {
    pub id: i64,
    pub repository_id: i64,
    pub digest: &'a str,
    pub media_type: &'a str,
    pub config_digest: Option<&'a str>,
    pub payload: &'a [u8],
    pub total_size: u64,
    pub created_at: i64,
    /// Digests of the blobs it references (each once).
    pub blobs: &'a [&'a str],
}

enum Connection {
    /// One SQLite connection inside one transaction.
    Sqlite(sqlx::pool::PoolConnection<Any>),
    Postgres(tokio_postgres::Client),
}

pub struct Seeder {
    conn: Connection,
    tables: Vec<Table>,
}

impl Seeder {
    /// Migrates the database at `url` and opens it for seeding.
    pub async fn open(url: &str) -> anyhow::Result<Seeder> {
        sqlx::any::install_default_drivers();
        super::migrate(url).await?;
        let conn = if url.starts_with("sqlite") {
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await?;
            let mut conn = pool.acquire().await?;
            conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF")
                .await?;
            conn.execute("BEGIN").await?;
            Connection::Sqlite(conn)
        } else {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .context("connecting to PostgreSQL to seed")?;
            tokio::spawn(connection);
            if let Err(e) = client
                .batch_execute("SET session_replication_role = replica")
                .await
            {
                tracing::info!(error = %e, "seeding with triggers on (needs a superuser to turn them off)");
            }
            Connection::Postgres(client)
        };
        Ok(Seeder {
            conn,
            tables: TABLES
                .iter()
                .map(|(name, columns)| Table {
                    name,
                    columns,
                    width: columns.split(',').count(),
                    values: Vec::new(),
                })
                .collect(),
        })
    }

    async fn add(&mut self, table: &str, row: Vec<Value>) -> anyhow::Result<()> {
        let t = self
            .tables
            .iter_mut()
            .find(|t| t.name == table)
            .with_context(|| format!("no table {table} to seed"))?;
        anyhow::ensure!(row.len() == t.width, "{table}: {} values", row.len());
        t.values.extend(row);
        let full = t.values.len() > FLUSH_VALUES;
        if full {
            self.flush().await?;
        }
        Ok(())
    }

    /// A repository and its namespaces.
    pub async fn repository(&mut self, id: i64, name: &str, at: i64) -> anyhow::Result<()> {
        let row = vec![Value::Int(id), Value::Text(name.into()), Value::Int(at)];
        self.add("repositories", row).await?;
        for ns in namespaces_of(name) {
            let row = vec![Value::Text(ns.into()), Value::Int(id)];
            self.add("repository_namespaces", row).await?;
        }
        Ok(())
    }

    /// An active blob row.
    pub async fn blob(&mut self, digest: &str, size: u64, at: i64) -> anyhow::Result<()> {
        let row = vec![
            Value::Text(digest.into()),
            Value::Int(size as i64),
            Value::Text("active".into()),
            Value::Int(at),
        ];
        self.add("blobs", row).await
    }

    /// A blob's link into a repository (an upload or mount there).
    pub async fn link(&mut self, repository_id: i64, digest: &str, at: i64) -> anyhow::Result<()> {
        let row = vec![
            Value::Int(repository_id),
            Value::Text(digest.into()),
            Value::Int(at),
        ];
        self.add("repository_blobs", row).await
    }

    pub async fn manifest(&mut self, m: &SeedManifest<'_>) -> anyhow::Result<()> {
        let row = vec![
            Value::Int(m.id),
            Value::Int(m.repository_id),
            Value::Text(m.digest.into()),
            Value::Text(m.media_type.into()),
            Value::OptText(m.config_digest.map(str::to_owned)),
            Value::Bytes(m.payload.to_vec()),
            Value::Int(m.total_size as i64),
            Value::Int(m.created_at),
        ];
        self.add("manifests", row).await?;
        for d in m.blobs {
            let row = vec![
                Value::Int(m.id),
                Value::Int(m.repository_id),
                Value::Text((*d).into()),
            ];
            self.add("manifest_blobs", row).await?;
        }
        Ok(())
    }

    pub async fn tag(
        &mut self,
        repository_id: i64,
        name: &str,
        manifest_id: i64,
        at: i64,
    ) -> anyhow::Result<()> {
        let row = vec![
            Value::Int(repository_id),
            Value::Text(name.into()),
            Value::Int(manifest_id),
            Value::Int(at),
        ];
        self.add("tags", row).await
    }

    /// Queues a blob for GC review (as an upload or an unlink does).
    pub async fn blob_review(&mut self, digest: &str, due: i64) -> anyhow::Result<()> {
        let row = vec![Value::Text(digest.into()), Value::Int(due)];
        self.add("gc_blob_reviews", row).await
    }

    /// Queues a manifest for GC review (as a tag deletion does).
    pub async fn manifest_review(&mut self, id: i64, due: i64) -> anyhow::Result<()> {
        let row = vec![Value::Int(id), Value::Int(due)];
        self.add("gc_manifest_reviews", row).await
    }

    /// Writes every buffered row, tables in foreign-key order.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        for t in &mut self.tables {
            let values = std::mem::take(&mut t.values);
            if values.is_empty() {
                continue;
            }
            match &mut self.conn {
                Connection::Postgres(client) => copy_in(client, t, &values).await?,
                Connection::Sqlite(conn) => insert_many(conn, t, &values).await?,
            }
        }
        Ok(())
    }

    /// Flushes, marks the usage aggregates unbuilt (the next fold rebuilds them), moves
    /// PostgreSQL's id sequences past the ids given, commits and analyzes.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.flush().await?;
        const UNBUILT: &str = "DELETE FROM usage_journal; DELETE FROM usage_blob_journal; DELETE FROM usage_registry;";
        match self.conn {
            Connection::Postgres(client) => {
                let mut sql = String::from(UNBUILT);
                for t in ["repositories", "manifests"] {
                    let _ = write!(
                        sql,
                        "SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT COALESCE(MAX(id), 1) FROM {t}));"
                    );
                }
                sql.push_str("ANALYZE;");
                client.batch_execute(&sql).await?;
            }
            Connection::Sqlite(mut conn) => {
                conn.execute(UNBUILT).await?;
                conn.execute("COMMIT").await?;
                conn.execute("ANALYZE").await?;
            }
        }
        Ok(())
    }
}

/// One `COPY … FROM STDIN` (text format) of a table's buffered rows.
async fn copy_in(
    client: &tokio_postgres::Client,
    t: &Table,
    values: &[Value],
) -> anyhow::Result<()> {
    let mut data = String::with_capacity(values.len() * 24);
    for row in values.chunks(t.width) {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                data.push('\t');
            }
            match v {
                Value::Int(n) => {
                    let _ = write!(data, "{n}");
                }
                Value::Text(s) | Value::OptText(Some(s)) => copy_escape(&mut data, s),
                Value::OptText(None) => data.push_str("\\N"),
                Value::Bytes(b) => {
                    // bytea in hex, its backslash escaped for COPY.
                    data.push_str("\\\\x");
                    for byte in b {
                        let _ = write!(data, "{byte:02x}");
                    }
                }
            }
        }
        data.push('\n');
    }
    let sql = format!("COPY {} ({}) FROM STDIN", t.name, t.columns);
    let sink = client.copy_in::<_, Bytes>(sql.as_str()).await?;
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from(data))
        .await
        .with_context(|| format!("seeding {}", t.name))?;
    sink.finish()
        .await
        .with_context(|| format!("seeding {}", t.name))?;
    Ok(())
}

/// Text for COPY's text format: backslash, tab, newline and carriage return escaped.
fn copy_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Prepared many-row INSERTs of a table's buffered rows (SQLite, inside the seeding
/// transaction).
async fn insert_many(
    conn: &mut sqlx::pool::PoolConnection<Any>,
    t: &Table,
    values: &[Value],
) -> anyhow::Result<()> {
    for chunk in values.chunks(t.width * ROWS_PER_STATEMENT) {
        let rows = chunk.len() / t.width;
        let mut sql = format!("INSERT INTO {} ({}) VALUES ", t.name, t.columns);
        for r in 0..rows {
            sql.push_str(if r == 0 { "(" } else { ",(" });
            let first = r * t.width + 1;
            sql.push_str(&super::sql::placeholders(first, t.width));
            sql.push(')');
        }
        let mut args = AnyArguments::default();
        for v in chunk {
            match v {
                Value::Int(i) => args.add(*i),
                Value::Text(s) => args.add(s.clone()),
                Value::OptText(s) => args.add(s.clone()),
                Value::Bytes(b) => args.add(b.clone()),
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        sqlx::query_with::<Any, _>(&sql, args)
            .execute(&mut **conn)
            .await
            .with_context(|| format!("seeding {}", t.name))?;
    }
    Ok(())
}
