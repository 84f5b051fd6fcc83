-- What makes a retransmission the same request (merchant-h2h.md, "Duplicates and
-- idempotency"): the first 16 bytes of a SHA-256 over DE2, DE3, DE4, DE14, DE49, DE90 and
-- DE48 OR, as switch/src/content.rs computes it. A request with a row's identity and
-- another digest is answered 94 and changes nothing. NULL on rows written before it was
-- kept (they cannot tell, and count as the same request).
ALTER TABLE transactions ADD COLUMN content_digest BYTEA
    CHECK (content_digest IS NULL OR length(content_digest) = 16);
