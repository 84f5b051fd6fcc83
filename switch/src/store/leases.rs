//! Instance leases (the `instance_leases` table): each running instance renews its row; an
//! instance whose lease has expired is taken over by another one, exactly once (the row's
//! delete and the recovery of its in-doubt transactions commit together).

use deadpool_postgres::Pool;

use super::StoreError;
use super::reversals::recover_on;

/// Most expired leases taken over in one look (a deployment has a handful of instances).
pub const TAKEOVERS_PER_LOOK_MAX: i64 = 16;

/// Takes `instance_id`'s lease for this process (`incarnation`), whoever held it: one
/// instance id runs one process at a time, and this one is starting.
pub(super) async fn take(
    pool: &Pool,
    instance_id: i16,
    incarnation: i64,
    lease_ms: i64,
) -> Result<(), StoreError> {
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO instance_leases (instance_id, incarnation, heartbeat_at, expires_at)
             VALUES ($1, $2, now(), now() + $3::bigint * interval '1 millisecond')
             ON CONFLICT (instance_id) DO UPDATE SET incarnation = excluded.incarnation,
               heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at",
            &[&instance_id, &incarnation, &lease_ms],
        )
        .await?;
    Ok(())
}

/// Renews the lease if this process still holds it; `Ok(false)` when it does not (it
/// expired and another instance took it over, or another process took the id).
pub(super) async fn renew(
    pool: &Pool,
    instance_id: i16,
    incarnation: i64,
    lease_ms: i64,
) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE instance_leases SET heartbeat_at = now(),
               expires_at = now() + $3::bigint * interval '1 millisecond'
             WHERE instance_id = $1 AND incarnation = $2",
            &[&instance_id, &incarnation, &lease_ms],
        )
        .await?;
    Ok(n == 1)
}

/// Whether `instance_id`'s lease names `incarnation`.
pub(super) async fn held(
    pool: &Pool,
    instance_id: i16,
    incarnation: i64,
) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM instance_leases WHERE instance_id = $1 AND incarnation = $2)",
            &[&instance_id, &incarnation],
        )
        .await?;
    Ok(row.get(0))
}

/// Takes over every other instance whose lease has expired: deletes its lease and
/// reverses its in-doubt transactions, in one transaction per instance, so that of two
/// instances trying at once exactly one does it. The instances taken over, with how many
/// transactions each left in doubt.
pub(super) async fn take_over_expired(
    pool: &Pool,
    own_instance: i16,
) -> Result<Vec<(i16, u64)>, StoreError> {
    let mut client = pool.get().await?;
    let expired: Vec<i16> = client
        .query(
            "SELECT instance_id FROM instance_leases
             WHERE expires_at < now() AND instance_id <> $1 ORDER BY instance_id LIMIT $2",
            &[&own_instance, &TAKEOVERS_PER_LOOK_MAX],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut taken = Vec::with_capacity(expired.len());
    for instance_id in expired {
        let tx = client.transaction().await?;
        let deleted = tx
            .execute(
                "DELETE FROM instance_leases WHERE instance_id = $1 AND expires_at < now()",
                &[&instance_id],
            )
            .await?;
        if deleted == 1 {
            let recovered = recover_on(&tx, instance_id, 0).await?;
            tx.commit().await?;
            taken.push((instance_id, recovered));
        }
    }
    Ok(taken)
}
