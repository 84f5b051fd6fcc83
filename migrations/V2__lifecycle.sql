-- The whole payment lifecycle: the original purchase or pre-authorisation (the payment's
-- root row) carries the money state of the payment; completions, refunds and reversals
-- are rows of their own that name what they act on.

ALTER TABLE transactions DROP CONSTRAINT transactions_state_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_state_check
    CHECK (state IN ('authorising', 'approved', 'declined', 'refused', 'reversing', 'reversed', 'captured'));

-- Refunds sent to the bank and not yet settled either way.
ALTER TABLE transactions ADD COLUMN refund_reserved_minor BIGINT NOT NULL DEFAULT 0;
-- A completion of this pre-authorisation is at the bank.
ALTER TABLE transactions ADD COLUMN completion_pending BOOLEAN NOT NULL DEFAULT FALSE;
-- Refund reason (DE48 RR), for refunds.
ALTER TABLE transactions ADD COLUMN refund_reason TEXT;

-- The database itself refuses a refund beyond what was captured, whichever instance
-- tries: two refunds racing for the last unit cannot both pass.
ALTER TABLE transactions ADD CONSTRAINT transactions_refunds_within_captured
    CHECK (refunded_minor >= 0 AND refund_reserved_minor >= 0
           AND refunded_minor + refund_reserved_minor <= captured_minor);

CREATE INDEX transactions_order_ref ON transactions (merchant_id, order_ref, id)
    WHERE kind IN ('purchase', 'preauth');
CREATE INDEX transactions_original ON transactions (original_id) WHERE original_id IS NOT NULL;

-- Notifications to merchants (0620): stored before delivery, delivered at least once to a
-- signed-on connection of the merchant, repeated until answered 0630.
CREATE TABLE notifications (
    id              BIGSERIAL PRIMARY KEY,
    merchant_id     TEXT NOT NULL,
    terminal_id     TEXT NOT NULL,
    transaction_id  BIGINT NOT NULL REFERENCES transactions (id),
    event           TEXT NOT NULL,
    status          TEXT NOT NULL,
    rrn             TEXT NOT NULL,
    order_ref       TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    stan            TEXT,
    transmitted_at  TEXT,
    delivered_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (transaction_id, event)
);
CREATE INDEX notifications_undelivered ON notifications (merchant_id, id) WHERE delivered_at IS NULL;

-- The double-entry ledger. Accounts: 'bank:<id>' (what the bank owes: an asset, debits
-- positive) and 'merchant:<id>' (what is owed to the merchant: credits negative). Every
-- transaction's postings sum to zero.
CREATE TABLE ledger_postings (
    id              BIGSERIAL PRIMARY KEY,
    transaction_id  BIGINT NOT NULL REFERENCES transactions (id),
    account         TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL,
    currency        SMALLINT NOT NULL,
    business_day    DATE NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_postings_account ON ledger_postings (account, business_day);
CREATE INDEX ledger_postings_transaction ON ledger_postings (transaction_id);
