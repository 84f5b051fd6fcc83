-- The back office (issue 12): operator and merchant-user accounts, their sessions, API
-- keys, second factor and recovery codes, and the append-only audit log.

CREATE TABLE accounts (
    id             BIGSERIAL PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9._@-]{3,64}$'),
    -- 'merchant': a merchant's staff, scoped to merchant_id; the others are the switch's
    -- operators, in increasing power.
    role           TEXT NOT NULL CHECK (role IN ('merchant', 'viewer', 'operator', 'approver', 'admin', 'superadmin')),
    merchant_id    TEXT REFERENCES merchants (id),
    -- PHC string, argon2id.
    password_hash  TEXT NOT NULL,
    -- nonce || AES-256-GCM ciphertext of the TOTP secret (sealed by the vault); set at
    -- enrolment, trusted once totp_enabled.
    totp_secret    BYTEA,
    totp_enabled   BOOLEAN NOT NULL DEFAULT FALSE,
    -- The last RFC 6238 time step accepted: a code is accepted once (RFC 6238 §5.2).
    totp_last_step BIGINT,
    locked_until   TIMESTAMPTZ,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((role = 'merchant') = (merchant_id IS NOT NULL))
);

-- Opaque session tokens, stored as SHA-256 of the token.
CREATE TABLE account_sessions (
    token_hash   BYTEA PRIMARY KEY,
    account_id   BIGINT NOT NULL REFERENCES accounts (id),
    created_at   TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ,
    -- FALSE while an account that needs a second factor has not enrolled one: the
    -- session may only enrol.
    mfa_done     BOOLEAN NOT NULL,
    source_addr  TEXT NOT NULL
);
CREATE INDEX account_sessions_account ON account_sessions (account_id);

CREATE TABLE api_keys (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    BYTEA NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('merchant', 'viewer', 'operator', 'approver', 'admin', 'superadmin')),
    merchant_id TEXT REFERENCES merchants (id),
    created_by  BIGINT NOT NULL REFERENCES accounts (id),
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ,
    CHECK ((role = 'merchant') = (merchant_id IS NOT NULL))
);

CREATE TABLE login_failures (
    account_id  BIGINT NOT NULL REFERENCES accounts (id),
    at          TIMESTAMPTZ NOT NULL,
    source_addr TEXT NOT NULL
);
CREATE INDEX login_failures_account_at ON login_failures (account_id, at);

-- Addresses an account has logged in from; shown = the account has been told.
CREATE TABLE login_addresses (
    account_id    BIGINT NOT NULL REFERENCES accounts (id),
    source_addr   TEXT NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL,
    shown         BOOLEAN NOT NULL,
    PRIMARY KEY (account_id, source_addr)
);

-- One-time recovery codes, stored as SHA-256 (they are random, 80 bits).
CREATE TABLE recovery_codes (
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    code_hash  BYTEA NOT NULL,
    used_at    TIMESTAMPTZ,
    PRIMARY KEY (account_id, code_hash)
);

-- Every back-office action: who, when, from where, what, and the values before and after.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
    actor       TEXT NOT NULL,
    actor_role  TEXT,
    source_addr TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    outcome     TEXT NOT NULL,
    before      JSONB,
    after       JSONB
);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);

-- Append-only: a record of who did what is worthless if it can be edited.
CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP;
END;
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- Refunds requested from the back office (maker-checker): above the configured amount a
-- request waits for a different approver; it is executed through the merchant request
-- path (same checks, journal and bank messages) with the DE11 and DE7 kept here, so a
-- request is sent as one merchant request, once.
CREATE TABLE refund_requests (
    id              BIGSERIAL PRIMARY KEY,
    requested_by    TEXT NOT NULL,
    -- The requester's key: the same key again returns this request instead of a new one.
    idempotency_key TEXT NOT NULL,
    original_rrn    TEXT NOT NULL,
    merchant_id     TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    reason          TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected', 'expired', 'executed')),
    needs_approval  BOOLEAN NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    decided_by      TEXT,
    decided_at      TIMESTAMPTZ,
    sent_stan       TEXT,
    sent_de7        TEXT,
    refund_rrn      TEXT,
    response_code   TEXT,
    UNIQUE (requested_by, idempotency_key),
    -- Maker-checker: the database itself refuses a request approved by its requester.
    CHECK (decided_by IS NULL OR decided_by <> requested_by OR NOT needs_approval)
);
CREATE INDEX refund_requests_pending ON refund_requests (id) WHERE state = 'pending';

-- MAC key rotation with an overlap window: the previous key (sealed like the current one)
-- still verifies requests until mac_key_prev_until; answers use the current key.
ALTER TABLE merchants ADD COLUMN mac_key_prev_enc BYTEA;
ALTER TABLE merchants ADD COLUMN mac_key_prev_until TIMESTAMPTZ;

-- Administrator-initiated password resets: a one-time token (stored as SHA-256) that lets
-- the account set a new password once, before it expires.
CREATE TABLE password_resets (
    token_hash BYTEA PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id),
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ
);
