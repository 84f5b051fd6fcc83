//! The private PostgreSQL and Redis that scripts/test.sh starts are there and behave.

use std::time::Duration;

use redis::AsyncCommands;
use system_tests::{
    PgOutage, fresh_database, pg_connect, pg_is_running, pg_url, redis_url, unique_name,
};

// Proves the private PostgreSQL takes DDL and data in a fresh database, that fresh databases
// are isolated from each other, and that a test can stop and restart the server and find its
// rows again.
#[tokio::test]
async fn postgres_fresh_database_roundtrip_and_restart() {
    let url = fresh_database("services_pg");
    assert_ne!(url, pg_url());
    let client = pg_connect(&url).await;
    client
        .batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, note TEXT NOT NULL)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO t VALUES ($1, $2)", &[&7_i64, &"seven"])
        .await
        .unwrap();
    let row = client
        .query_one("SELECT note FROM t WHERE id = $1", &[&7_i64])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "seven");

    let other = pg_connect(&fresh_database("services_pg_other")).await;
    let n: i64 = other
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 't'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "another fresh database must not see the table");
    drop(other);

    let outage = tokio::task::spawn_blocking(PgOutage::begin).await.unwrap();
    assert!(!tokio::task::spawn_blocking(pg_is_running).await.unwrap());
    let failed = client.query_one("SELECT 1", &[]).await;
    assert!(failed.is_err(), "a query during the outage must fail");
    tokio::task::spawn_blocking(move || outage.end())
        .await
        .unwrap();

    let client = pg_connect(&url).await;
    let row = client
        .query_one("SELECT note FROM t WHERE id = $1", &[&7_i64])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "seven");
}

// Proves the private Redis answers SET/GET with expiry and runs Lua scripts (EVAL), as the
// switch's deduplication and rate limiting need.
#[tokio::test]
async fn redis_set_get_and_eval() {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let key = unique_name("services_redis");

    let _: () = con.set_ex(&key, "hello", 60).await.unwrap();
    let got: Option<String> = con.get(&key).await.unwrap();
    assert_eq!(got.as_deref(), Some("hello"));
    let ttl: i64 = con.ttl(&key).await.unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");

    // A tiny counter script: INCR a key and give it a TTL on first use.
    let script = redis::Script::new(
        "local n = redis.call('INCR', KEYS[1]) \
         if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
         return n",
    );
    let counter = format!("{key}:count");
    for expected in 1..=3_i64 {
        let n: i64 = script
            .key(&counter)
            .arg(Duration::from_secs(60).as_millis() as u64)
            .invoke_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, expected);
    }
    let pttl: i64 = con.pttl(&counter).await.unwrap();
    assert!(pttl > 0, "the script set an expiry");

    // A plain EVAL with arguments.
    let sum: i64 = redis::cmd("EVAL")
        .arg("return tonumber(ARGV[1]) + tonumber(ARGV[2])")
        .arg(0)
        .arg(40)
        .arg(2)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(sum, 42);
}
