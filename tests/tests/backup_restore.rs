//! Backup and restore as docs/operations.md describes it: `pg_dump --format=custom` of a
//! switch's database with traffic in it, `pg_restore` into a new database, and the copy is
//! whole (same rows in every table) and consistent (`switchyard ledger check` is clean).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use system_tests::switchyard::{World, WorldOptions, next_stan, rc, run_status};
use system_tests::{fresh_database, pg_connect, unique_name};

fn pg_tool(name: &str) -> PathBuf {
    let dir = std::env::var("SWITCHYARD_TEST_PG_BIN")
        .expect("SWITCHYARD_TEST_PG_BIN (start scripts/services.sh first)");
    Path::new(&dir).join(name)
}

/// Runs a PostgreSQL client program; panics with its stderr when it fails.
fn run_pg(name: &str, args: &[&str]) {
    let out = Command::new(pg_tool(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every table of the public schema with its row count, sorted by name.
async fn row_counts(url: &str) -> Vec<(String, i64)> {
    let db = pg_connect(url).await;
    let tables = db
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("list tables");
    let mut counts = Vec::new();
    for t in tables {
        let name: String = t.get(0);
        let n: i64 = db
            .query_one(&format!("SELECT count(*) FROM \"{name}\""), &[])
            .await
            .expect("count rows")
            .get(0);
        counts.push((name, n));
    }
    counts
}

/// Traffic that leaves rows in most tables: approvals on both banks, a decline, a refund.
async fn make_traffic(world: &World) {
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let mut approved = None;
    for (i, (amount, pan)) in [
        (1000, "4111111111111111"),
        (2500, "5500000000000004"),
        (1051, "4111111111111111"),
        (700, "4111111111111111"),
    ]
    .into_iter()
    .enumerate()
    {
        let stan = next_stan();
        let m = c.purchase(&stan, amount, pan, &format!("BACKUP-{i}-{stan}"));
        let a = c.call(&m).await;
        let want = if amount == 1051 { "51" } else { "00" };
        assert_eq!(rc(&a), want, "purchase {i}");
        approved.get_or_insert(m);
    }
    let original = approved.expect("an approved purchase");
    let a = c.call(&c.refund(&next_stan(), &original, 400, None)).await;
    assert_eq!(rc(&a), "00", "refund");
    drop(c);
    let mut sw = sw;
    sw.process.signal("TERM");
    assert!(
        sw.process.wait_timeout(Duration::from_secs(60)).is_some(),
        "the switch stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_and_pg_restore_give_an_equal_consistent_database() {
    // A restored backup has every row of the original and passes the ledger check.
    let world = World::new("backup", WorldOptions::default());
    make_traffic(&world).await;
    let before = row_counts(&world.db_url).await;
    let transactions = before.iter().find(|(t, _)| t == "transaction_rows");
    assert!(
        matches!(transactions, Some((_, n)) if *n >= 5),
        "the traffic left transactions: {before:?}"
    );

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-configs");
    std::fs::create_dir_all(&dir).expect("dump dir");
    let dump = dir.join(format!("{}.dump", unique_name("backup")));
    let dump_arg = dump.to_str().expect("utf-8 path");
    run_pg(
        "pg_dump",
        &[
            "--format=custom",
            "--file",
            dump_arg,
            "--dbname",
            &world.db_url,
        ],
    );
    let restored = fresh_database("restored");
    run_pg(
        "pg_restore",
        &[
            "--no-owner",
            "--exit-on-error",
            "--dbname",
            &restored,
            dump_arg,
        ],
    );
    let _ = std::fs::remove_file(&dump);

    assert_eq!(row_counts(&restored).await, before, "row counts per table");
    let text = std::fs::read_to_string(&world.config).expect("config");
    assert!(text.contains(&world.db_url));
    let config = dir.join(format!("{}.toml", unique_name("restored")));
    std::fs::write(&config, text.replace(&world.db_url, &restored)).expect("write config");
    let cfg = config.to_str().expect("utf-8 path");
    let (status, out, err) = run_status(&["ledger", "check", "--config", cfg]);
    assert!(
        status.success(),
        "ledger check on the restored copy: {out}\n{err}"
    );
    assert!(out.contains("ledger check: ok"), "{out}");
    // The restored database is at the same schema version: nothing left to migrate.
    let (status, out, err) = run_status(&["migrate", "--config", cfg]);
    assert!(status.success(), "migrate: {err}");
    assert!(out.contains("0 migration(s) applied"), "{out}");
}
