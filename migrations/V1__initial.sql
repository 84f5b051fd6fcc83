-- Switchyard's durable state. Money is integer minor units of the row's currency.
-- Card numbers are never stored in clear: a keyed hash, the last four digits, and the
-- card data encrypted (AES-256-GCM) under a key from configuration.

CREATE TABLE merchants (
    id                  TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 15),
    name                TEXT NOT NULL,
    enabled             BOOLEAN NOT NULL DEFAULT TRUE,
    currencies          SMALLINT[] NOT NULL,
    per_txn_limit_minor BIGINT NOT NULL CHECK (per_txn_limit_minor > 0),
    rate_per_s          INTEGER NOT NULL CHECK (rate_per_s > 0),
    rate_burst          INTEGER NOT NULL CHECK (rate_burst > 0),
    -- nonce (12 bytes) || AES-256-GCM ciphertext and tag of the 32-byte MAC key
    mac_key_enc         BYTEA NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- BIN ranges: card numbers whose leading digits fall in [bin_low, bin_high] (compared as
-- prefixes of the same length) go to bank_id; the narrowest range wins, then priority.
CREATE TABLE bin_routes (
    id          BIGSERIAL PRIMARY KEY,
    bin_low     TEXT NOT NULL CHECK (bin_low ~ '^[0-9]{1,19}$'),
    bin_high    TEXT NOT NULL CHECK (bin_high ~ '^[0-9]{1,19}$'),
    bank_id     TEXT NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (length(bin_low) = length(bin_high) AND bin_low <= bin_high)
);

-- Each switch instance takes transaction ids in blocks of 1000.
CREATE SEQUENCE transaction_id_seq INCREMENT BY 1000 START WITH 1000;

-- One row per merchant request that passed the local checks (purchase, pre-authorisation,
-- completion, refund, reversal). `state` is the transaction state machine's state:
--   authorising  recorded, possibly at the bank, outcome not yet recorded
--   approved     the bank approved (purchase held/charged, pre-authorisation held)
--   declined     the bank declined
--   refused      the switch refused after recording (no route, bank unreachable)
--   reversing    outcome unknown (timeout, link lost, crash): a reversal is on its way
--   reversed     the bank acknowledged the reversal
CREATE TABLE transactions (
    id                   BIGINT PRIMARY KEY,
    instance_id          SMALLINT NOT NULL,
    merchant_id          TEXT NOT NULL,
    terminal_id          TEXT NOT NULL,
    stan                 TEXT NOT NULL,
    transmitted_at       TEXT NOT NULL,
    mti                  TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('purchase', 'preauth', 'completion', 'refund', 'reversal')),
    processing_code      TEXT NOT NULL,
    amount_minor         BIGINT NOT NULL CHECK (amount_minor >= 0),
    currency             SMALLINT NOT NULL,
    order_ref            TEXT,
    pan_hash             BYTEA,
    pan_last4            TEXT,
    card_enc             BYTEA,
    rrn                  TEXT NOT NULL UNIQUE,
    bank_id              TEXT,
    bank_stan            TEXT,
    bank_transmitted_at  TEXT,
    original_id          BIGINT REFERENCES transactions (id),
    state                TEXT NOT NULL CHECK (state IN ('authorising', 'approved', 'declined', 'refused', 'reversing', 'reversed')),
    response_code        TEXT,
    auth_code            TEXT,
    captured_minor       BIGINT NOT NULL DEFAULT 0,
    refunded_minor       BIGINT NOT NULL DEFAULT 0,
    reason               TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The idempotency backstop: one row per merchant request, whatever Redis says.
    CONSTRAINT transactions_request_key UNIQUE (merchant_id, terminal_id, stan, transmitted_at, mti)
);

-- The order-reference backstop: at most one live purchase or pre-authorisation per order.
CREATE UNIQUE INDEX transactions_live_order_ref ON transactions (merchant_id, order_ref)
    WHERE order_ref IS NOT NULL AND kind IN ('purchase', 'preauth') AND state IN ('authorising', 'approved');

CREATE INDEX transactions_unresolved ON transactions (instance_id, state)
    WHERE state IN ('authorising', 'reversing');

CREATE INDEX transactions_pan_hash ON transactions (pan_hash);

-- Store-and-forward of reversals: written before the first send, repeated until the bank
-- answers, kept in order per bank, expired into a state an operator sees.
CREATE TABLE reversals (
    id                  BIGSERIAL PRIMARY KEY,
    transaction_id      BIGINT NOT NULL UNIQUE REFERENCES transactions (id),
    bank_id             TEXT NOT NULL,
    reason              TEXT NOT NULL,
    state               TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'acknowledged', 'expired')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_response_code  TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    acknowledged_at     TIMESTAMPTZ
);

CREATE INDEX reversals_pending ON reversals (bank_id, id) WHERE state = 'pending';
