-- A journal whose cost per purchase is small and flat (issue 9).
--
-- Measured before this change: recording an outcome rewrote every index of its
-- transaction row, because `state` stood in the predicates of two partial indexes, so no
-- outcome UPDATE could be a heap-only tuple (HOT) update; each approved purchase then
-- added two postings with three indexes each, a sequence call and a foreign-key check
-- each. After it:
--   * no index of `transactions` names a column that an outcome changes, so the outcome
--     UPDATE is HOT (no index entry at all) when the row's page has room, which the
--     fillfactor leaves;
--   * the live-order-reference backstop keys on `order_live`, a generated column that
--     changes only when an order stops being live (declined, refused, reversed,
--     captured), not when it is approved;
--   * rows without an outcome are found through `in_doubt` (one small row per request
--     in flight, deleted with its outcome) instead of a partial index on `state`;
--   * postings are keyed by (transaction, account): a retried write cannot post twice,
--     and that key is their only B-tree; totals by business day use a BRIN index, which
--     costs nearly nothing for rows appended in time order.

ALTER TABLE transactions SET (fillfactor = 75);

ALTER TABLE transactions
    ADD COLUMN order_live BOOLEAN GENERATED ALWAYS AS (state IN ('authorising', 'approved')) STORED;

DROP INDEX transactions_live_order_ref;
CREATE UNIQUE INDEX transactions_live_order_ref ON transactions (merchant_id, order_ref)
    WHERE order_ref IS NOT NULL AND kind IN ('purchase', 'preauth') AND order_live;

-- Nothing reads transactions by card hash (velocity is counted in Redis).
DROP INDEX transactions_pan_hash;

-- Requests recorded and not yet settled by an outcome: written with the request, deleted
-- with its outcome. A row here whose transaction has moved on is harmless (recovery
-- removes it); a transaction in 'authorising' always has its row here.
CREATE TABLE in_doubt (
    transaction_id  BIGINT PRIMARY KEY,
    instance_id     SMALLINT NOT NULL
);
INSERT INTO in_doubt (transaction_id, instance_id)
    SELECT id, instance_id FROM transactions WHERE state = 'authorising';
DROP INDEX transactions_unresolved;

-- Postings: one per (transaction, account); no surrogate id, no foreign key on the hot
-- path (`switchyard ledger check` proves every posting names a transaction).
ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_pkey;
ALTER TABLE ledger_postings DROP COLUMN id;
ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_transaction_id_fkey;
DROP INDEX ledger_postings_account;
DROP INDEX ledger_postings_transaction;
ALTER TABLE ledger_postings ADD PRIMARY KEY (transaction_id, account);
CREATE INDEX ledger_postings_business_day ON ledger_postings USING brin (business_day);
