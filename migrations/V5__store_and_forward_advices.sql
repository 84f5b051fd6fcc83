-- The store-and-forward queue carries advices (completions, 0220) as well as reversals:
-- both are written before the first send and repeated (0221, 0401) until the bank
-- answers. A transaction may have one of each (a completion, then its reversal).
ALTER TABLE reversals ADD COLUMN kind TEXT NOT NULL DEFAULT 'reversal' CHECK (kind IN ('reversal', 'advice'));
ALTER TABLE reversals DROP CONSTRAINT reversals_transaction_id_key;
ALTER TABLE reversals ADD CONSTRAINT reversals_transaction_kind_key UNIQUE (transaction_id, kind);
COMMENT ON TABLE reversals IS 'Store-and-forward to banks: reversals and advices, in order per transaction';
