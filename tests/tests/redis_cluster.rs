//! The claim path on a Redis Cluster: every key of one script call carries the merchant as
//! its hash tag, so the switch runs unchanged against three nodes.

use system_tests::switchyard::{
    MERCHANT_ID, World, WorldOptions, answer_key, as_repeat, next_stan, order_ref, rc,
};
use system_tests::{RedisCluster, redis_cli};

const VISA: &str = "4111111111111111";

/// The keys the switch wrote for this world's prefix, over all nodes.
fn keys(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let pattern = format!("{prefix}*");
    cluster
        .ports()
        .iter()
        .filter_map(|p| redis_cli(*p, &["--scan", "--pattern", &pattern]))
        .flat_map(|out| out.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

// Proves purchases, a retransmission answered from the first answer and a local refusal
// replayed all work against a three-node Redis Cluster, that a merchant rate limit bites
// there (65), and that every key the switch wrote carries the merchant's hash tag (one
// slot per merchant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_path_on_a_redis_cluster() {
    let cluster = RedisCluster::start("claims");
    let world = World::new(
        "redis_cluster",
        WorldOptions {
            redis_cluster_nodes: cluster.urls(),
            merchant_rate: 5,
            merchant_burst: 5,
            ..WorldOptions::default()
        },
    );
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;

    let stan = next_stan();
    let req = c.purchase(&stan, 1000, VISA, &order_ref("CLUSTER", &stan));
    let first = c.call(&req).await;
    assert_eq!(rc(&first), "00", "a purchase through the cluster");
    let again = c.call(&as_repeat(&req)).await;
    assert_eq!(
        answer_key(&again),
        answer_key(&first),
        "the 0201 gets the same answer"
    );

    let stan = next_stan();
    let mut bad = c.purchase(&stan, 1000, VISA, &order_ref("CLUSTER", &stan));
    bad.fields.insert(2, b"4111111111111112".to_vec());
    let refused = c.call(&bad).await;
    assert_eq!(rc(&refused), "14", "a bad card number is refused locally");
    let again = c.call(&as_repeat(&bad)).await;
    assert_eq!(
        answer_key(&again),
        answer_key(&refused),
        "the refusal is replayed"
    );

    let mut codes = Vec::new();
    for _ in 0..12 {
        let stan = next_stan();
        let m = c.purchase(&stan, 1000, VISA, &order_ref("BURST", &stan));
        codes.push(rc(&c.call(&m).await));
    }
    assert!(
        codes.iter().any(|rc| rc == "65"),
        "the rate limit bites: {codes:?}"
    );
    assert!(
        codes.iter().any(|rc| rc == "00"),
        "within the limit: {codes:?}"
    );

    let written = keys(&cluster, &world.redis_prefix);
    assert!(
        !written.is_empty(),
        "the switch wrote its keys to the cluster"
    );
    let tag = format!("{{{MERCHANT_ID}}}");
    for k in &written {
        assert!(k.contains(&tag), "key {k} carries the merchant's hash tag");
    }
}
