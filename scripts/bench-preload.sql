-- scripts/bench-preload.sql: fills the benchmark's database with :n historical
-- transactions before the switch starts, so the benchmark measures a journal with a past
-- (indexes of realistic depth, tables larger than a few pages), not an empty one.
--
-- THIS FILE MUST FOLLOW THE SCHEMA (migrations/*.sql). Whoever changes the tables it
-- writes (transaction_rows, settlements, ledger_postings, reversals, the sequence transaction_id_seq)
-- changes it too; scripts/bench.sh stops with an error when it fails (ON_ERROR_STOP). It
-- names only columns it must fill and leaves the others to their defaults (generated
-- columns, surrogate ids), so a column added with a default or generated does not
-- break it.
--
--   psql -v ON_ERROR_STOP=1 -v n=1000000 -v merchant=BENCHMERCHANT01 -f scripts/bench-preload.sql
--
-- What it writes, set-based (one INSERT ... SELECT per table):
--   * ids 1..:n, below the switch's id sequence, which is then moved past them (the
--     switch takes ids in blocks of 1000 from transaction_id_seq; RRNs are the id in 12
--     digits, as the switch makes them);
--   * purchases of :merchant, spread evenly over the last 30 days in id order, on
--     terminals H0000000..H0001999 (the load generator's terminals start with L);
--   * 97 % approved (captured, with their two ledger postings: the bank owes, the
--     merchant is owed), 2 % declined (51 or 05), 1 % timed out and reversed (91, with
--     an acknowledged reversal);
--   * card hashes and sealed card data are random-looking bytes of the real sizes: no
--     historical card matches a card the load generator sends.
-- Then VACUUM ANALYZE, so the planner and the visibility map see the tables as a long-
-- running database would.

\set ON_ERROR_STOP on
\if :{?n}
\else
  \echo 'bench-preload.sql: give the number of transactions with -v n=N'
  SELECT 1 / 0 AS missing_n;
\endif
\if :{?merchant}
\else
  \echo 'bench-preload.sql: give the merchant with -v merchant=ID'
  SELECT 1 / 0 AS missing_merchant;
\endif

-- Sorting the postings and building index entries for a million rows fits in memory.
SET maintenance_work_mem = '256MB';
SET work_mem = '64MB';

BEGIN;

INSERT INTO transaction_rows (id, instance_id, merchant_id, terminal_id, stan, transmitted_at, mti,
    kind, processing_code, amount_minor, currency, order_ref, pan_hash, pan_last4, card_enc, rrn,
    bank_id, bank_stan, bank_transmitted_at, state, response_code, auth_code, captured_minor,
    reason, created_at, updated_at)
SELECT i, 1, :'merchant',
    'H' || lpad((i % 2000)::text, 7, '0'),
    lpad(((i / 2000) % 1000000)::text, 6, '0'),
    to_char(at AT TIME ZONE 'UTC', 'MMDDHH24MISS'),
    '0200', 'purchase', '000000', amount, 840,
    'HIST-' || lpad(i::text, 10, '0'),
    sha256(int8send(i)),
    lpad((i % 10000)::text, 4, '0'),
    substring(sha256(int8send(-i)) || sha256(int8send(i + :n)) FROM 1 FOR 48),
    lpad(i::text, 12, '0'),
    CASE WHEN (i / 101) % 2 = 0 THEN 'bank-a' ELSE 'bank-b' END,
    lpad((i % 999999 + 1)::text, 6, '0'),
    to_char(at AT TIME ZONE 'UTC', 'MMDDHH24MISS'),
    -- As the switch writes them (V16): an approved purchase's row stays 'authorising',
    -- its approval is a settlement (below).
    CASE WHEN state = 'approved' THEN 'authorising' ELSE state END,
    CASE WHEN state = 'approved' THEN NULL ELSE rc END,
    NULL,
    0,
    NULL,
    at, at + interval '150 milliseconds'
FROM (
    SELECT i,
        now() - (:n - i) * (interval '30 days' / :n) AS at,
        100 + (i * 7919) % 50000 AS amount,
        CASE WHEN i % 100 BETWEEN 96 AND 97 THEN 'declined'
             WHEN i % 100 = 98 THEN 'reversed'
             ELSE 'approved' END AS state,
        CASE WHEN i % 100 = 96 THEN '51'
             WHEN i % 100 = 97 THEN '05'
             WHEN i % 100 = 98 THEN '91'
             ELSE '00' END AS rc
    FROM generate_series(1::bigint, :n) AS i
) AS g;

INSERT INTO settlements (transaction_id, state, response_code, auth_code, settled_at)
SELECT id, 'approved', '00', lpad((id * 7 % 1000000)::text, 6, '0'), updated_at
FROM transaction_rows
WHERE id <= :n AND state = 'authorising'
ORDER BY id;

-- An approved purchase is captured at once: the bank owes it, the merchant is owed it.
INSERT INTO ledger_postings (transaction_id, account, amount_minor, currency, business_day,
    created_at)
SELECT t.id, a.account, a.sign * t.amount_minor, t.currency,
    (t.created_at AT TIME ZONE 'UTC')::date, t.updated_at
FROM transactions t,
    LATERAL (VALUES ('bank:' || t.bank_id, 1), ('merchant:' || t.merchant_id, -1))
        AS a(account, sign)
WHERE t.id <= :n AND t.state = 'approved'
ORDER BY t.id, a.sign DESC;

-- Timeouts: reversed at the bank, acknowledged a second later.
INSERT INTO reversals (transaction_id, bank_id, reason, state, attempts, next_attempt_at,
    last_response_code, created_at, acknowledged_at)
SELECT id, bank_id, 'timeout', 'acknowledged', 1, created_at, '00', created_at,
    created_at + interval '1 second'
FROM transactions
WHERE id <= :n AND state = 'reversed'
ORDER BY id;

-- The switch's next block of ids starts above every preloaded one.
SELECT setval('transaction_id_seq',
    greatest((:n / 1000 + 1) * 1000, (SELECT last_value + 1000 FROM transaction_id_seq)),
    false) AS next_id_block;

COMMIT;

VACUUM ANALYZE transaction_rows;
VACUUM ANALYZE settlements;
VACUUM ANALYZE ledger_postings;
VACUUM ANALYZE reversals;

SELECT count(*) AS preloaded_transactions FROM transactions WHERE id <= :n;
