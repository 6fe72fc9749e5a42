//! The two dialects' migrations stay twins: the same versions in both directories, files
//! byte-identical unless they are known to need dialect syntax, and those still creating the
//! same tables, indexes and views. (Applied migrations are never edited: refinery checks their
//! checksums, so the list of dialect-specific files is kept here rather than in the files.)

use std::collections::BTreeSet;
use std::path::Path;

/// Files that use dialect syntax (types, identity columns, collations).
const DIALECT_SPECIFIC: &[&str] = &[
    "V1__initial.sql",
    "V9__usage_aggregates.sql",
    "V10__upload_checkpoints.sql",
];

fn files(dialect: &str) -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn read(dialect: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect)
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// Names of what a migration creates: `table foo`, `index bar`, `view baz`.
fn created(sql: &str) -> BTreeSet<String> {
    let words: Vec<String> = sql
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let mut out = BTreeSet::new();
    for (i, w) in words.iter().enumerate() {
        if w != "create" {
            continue;
        }
        let mut j = i + 1;
        while j < words.len()
            && ["unique", "or", "replace", "temporary"].contains(&words[j].as_str())
        {
            j += 1;
        }
        let Some(kind) = words.get(j) else { continue };
        // Triggers too: the usage journal is only as complete as the triggers that write it.
        if !["table", "index", "view", "trigger"].contains(&kind.as_str()) {
            continue;
        }
        let mut k = j + 1;
        while k < words.len() && ["if", "not", "exists"].contains(&words[k].as_str()) {
            k += 1;
        }
        if let Some(name) = words.get(k) {
            out.insert(format!("{kind} {name}"));
        }
    }
    out
}

#[test]
fn both_dialects_have_the_same_migrations() {
    let (sqlite, postgres) = (files("sqlite"), files("postgres"));
    assert_eq!(
        sqlite, postgres,
        "every migration needs a twin in the other dialect"
    );
    for name in &sqlite {
        assert!(
            name.starts_with('V') && name.contains("__") && name.ends_with(".sql"),
            "{name}: migrations are named V<n>__<what>.sql"
        );
    }
}

#[test]
fn shared_migrations_are_identical() {
    for name in files("sqlite") {
        let (a, b) = (read("sqlite", &name), read("postgres", &name));
        if DIALECT_SPECIFIC.contains(&name.as_str()) {
            assert_ne!(
                a, b,
                "{name} is identical now: remove it from DIALECT_SPECIFIC"
            );
            assert_eq!(
                created(&a),
                created(&b),
                "{name}: the dialects create different tables, indexes or views"
            );
        } else {
            assert!(
                a == b,
                "migrations/sqlite/{name} and migrations/postgres/{name} differ; they are meant \
                 to be identical (list the file in DIALECT_SPECIFIC if it needs dialect syntax)"
            );
        }
    }
}

#[test]
fn created_names_are_found() {
    let sql = "CREATE TABLE a (x INT); CREATE UNIQUE INDEX IF NOT EXISTS b ON a (x);\nCREATE VIEW c AS SELECT 1;\nCREATE TRIGGER d AFTER INSERT ON a BEGIN SELECT 1; END;";
    let want: BTreeSet<String> = ["table a", "index b", "view c", "trigger d"]
        .map(String::from)
        .into();
    assert_eq!(created(sql), want);
}

/// `scripts/check-migrations` (run by .ci/run) passes the shipped migrations and refuses a
/// destructive one unless it is marked as a contract step.
#[test]
fn destructive_migrations_need_a_contract_step() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-migrations");
    let run = |dir: &Path| {
        std::process::Command::new("python3")
            .arg(&script)
            .arg(dir)
            .output()
            .expect("run python3 scripts/check-migrations")
    };
    let shipped = run(&Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"));
    assert!(
        shipped.status.success(),
        "{}",
        String::from_utf8_lossy(&shipped.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("postgres")).unwrap();
    for (name, sql) in [
        ("V8__tidy.sql", "ALTER TABLE blobs DROP COLUMN size;"),
        ("V9__names.sql", "ALTER TABLE tags RENAME TO labels;"),
        ("V10__gone.sql", "DROP TABLE uploads;"),
    ] {
        let path = dir.path().join("postgres").join(name);
        std::fs::write(&path, sql).unwrap();
        let out = run(dir.path());
        assert!(!out.status.success(), "{name} passed the check");
        assert!(String::from_utf8_lossy(&out.stderr).contains(name));
        let contract = dir
            .path()
            .join("postgres")
            .join(name.replace("__", "__contract_"));
        std::fs::rename(&path, &contract).unwrap();
        assert!(
            run(dir.path()).status.success(),
            "{name} as a contract step"
        );
    }
    // Comments do not count.
    std::fs::write(
        dir.path().join("postgres/V11__c.sql"),
        "-- we never DROP TABLE here\nCREATE TABLE x (y INT);",
    )
    .unwrap();
    assert!(run(dir.path()).status.success());
}
