-- Messages a bank starts (advices): each is applied exactly once. A duplicate (the same
-- bank, MTI with a repeat counted as its original, STAN and DE7) is acknowledged again
-- and changes nothing. The row is written before the acknowledgement is sent.
CREATE TABLE bank_advices (
    id              BIGSERIAL PRIMARY KEY,
    bank_id         TEXT NOT NULL,
    mti             TEXT NOT NULL,
    stan            TEXT NOT NULL,
    transmitted_at  TEXT NOT NULL,
    rrn             TEXT,
    transaction_id  BIGINT REFERENCES transactions (id),
    effect          TEXT NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (bank_id, mti, stan, transmitted_at)
);
