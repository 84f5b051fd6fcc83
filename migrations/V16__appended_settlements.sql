-- An approved purchase's outcome appended as a narrow row, not written over its
-- 35-column transaction row (issue 9).
--
-- Measured before this change (docs/loadtest.md, 2026-12-01 and 2026-12-02): the outcome
-- UPDATE of the journal cost 14-25 µs and 470 bytes of WAL per row, a narrow appended row
-- 3.2-4.7 µs and 160 bytes, and the UPDATE made the batch statement's second result
-- relation on the table, whose CHECK constraints PostgreSQL rebuilds on every execution.
--
-- After it:
--   * `transaction_rows` is the table; `transactions` is a view over it that every reader
--     keeps using: a row still 'authorising' that has a settlement shows the settlement's
--     state, response and authorisation codes, and (an approved purchase is captured at
--     once) its amount as captured;
--   * `settlements` holds the first settlement of a request while its row says
--     'authorising': the journal's approvals of purchases, and recovery's reversals of
--     requests left in doubt. Its key makes them exclusive: whichever commits first wins,
--     the other inserts nothing (a unique check waits for the other writer's commit, so
--     no snapshot can let both through);
--   * a writer that locks a row to change it folds the settlement into the row first
--     (switch/src/store/reads.rs), so the row's own columns and constraints (refunds
--     within captured) hold from then on; a settlement of a row that has moved on is
--     ignored by the view.
--
-- Not a rolling-upgrade migration: binaries from before it write `transactions`, which
-- becomes a view. Stop every instance, migrate, start the new binaries
-- (docs/operations.md).

ALTER TABLE transactions RENAME TO transaction_rows;

CREATE TABLE settlements (
    transaction_id  BIGINT PRIMARY KEY,
    state           TEXT NOT NULL CHECK (state IN ('approved', 'reversing')),
    response_code   TEXT NOT NULL,
    auth_code       TEXT,
    settled_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Appended in time order and removed only with their transactions (retention), as
-- transaction_rows and ledger_postings (V9): vacuumed on schedule, not per insert.
ALTER TABLE settlements SET (autovacuum_vacuum_insert_threshold = -1);

CREATE VIEW transactions AS
SELECT t.id, t.instance_id, t.merchant_id, t.terminal_id, t.stan, t.transmitted_at, t.mti, t.kind,
    t.processing_code, t.amount_minor, t.currency, t.order_ref, t.pan_hash, t.pan_last4, t.card_enc,
    t.rrn, t.bank_id, t.bank_stan, t.bank_transmitted_at, t.original_id,
    coalesce(s.state, t.state) AS state,
    CASE WHEN s.transaction_id IS NULL THEN t.response_code ELSE s.response_code END AS response_code,
    CASE WHEN s.transaction_id IS NULL THEN t.auth_code ELSE s.auth_code END AS auth_code,
    CASE WHEN s.state = 'approved' AND t.kind = 'purchase' THEN t.amount_minor
         ELSE t.captured_minor END AS captured_minor,
    t.refunded_minor, t.reason, t.created_at,
    coalesce(s.settled_at, t.updated_at) AS updated_at,
    t.refund_reserved_minor, t.completion_pending, t.refund_reason, t.inquired_at, t.inquiries,
    t.order_slot, t.content_digest
FROM transaction_rows t
LEFT JOIN settlements s ON s.transaction_id = t.id AND t.state = 'authorising';

-- Rows recorded by binaries before this migration have no settlement; nothing to move.
