-- Back-office captures (0220) and voids (0400) share the refund requests' maker-checker,
-- idempotency and execution record (issue 12); `kind` says which message a request sends.
ALTER TABLE refund_requests ADD COLUMN kind TEXT NOT NULL DEFAULT 'refund'
    CHECK (kind IN ('refund', 'capture', 'void'));
-- Approved requests whose execution has no recorded outcome yet (a crash between the
-- approval and the answer): the resumer finds them here.
CREATE INDEX refund_requests_approved ON refund_requests (decided_at) WHERE state = 'approved';

-- The store-and-forward queue from the back office: an approver may discard a message the
-- switch would otherwise repeat (or has given up on), with a reason.
ALTER TABLE reversals DROP CONSTRAINT reversals_state_check;
ALTER TABLE reversals ADD CONSTRAINT reversals_state_check
    CHECK (state IN ('pending', 'acknowledged', 'expired', 'discarded'));
ALTER TABLE reversals ADD COLUMN discarded_by TEXT;
ALTER TABLE reversals ADD COLUMN discard_reason TEXT;
