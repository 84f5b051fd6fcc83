-- Status inquiries about transactions whose outcome is unknown: when the last was sent and
-- how many, so they go out at a bounded rate.
ALTER TABLE transactions ADD COLUMN inquired_at TIMESTAMPTZ;
ALTER TABLE transactions ADD COLUMN inquiries INTEGER NOT NULL DEFAULT 0;
