-- A back-office request whose sending can never succeed (its original gone, its merchant
-- unknown to the switch, a message that cannot be built) ends `failed` with the reason,
-- instead of staying `approved` and being resumed every round for ever, crowding out
-- real resumptions (issue 12 review). A request whose sending failed for a passing reason
-- (the store, the switch stopping, the first execution still in flight) is tried again
-- after a delay that grows with its attempts.
ALTER TABLE refund_requests DROP CONSTRAINT refund_requests_state_check;
ALTER TABLE refund_requests ADD CONSTRAINT refund_requests_state_check
    CHECK (state IN ('pending', 'approved', 'rejected', 'expired', 'executed', 'failed'));
ALTER TABLE refund_requests ADD COLUMN failure TEXT;
ALTER TABLE refund_requests ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE refund_requests ADD COLUMN next_attempt_at TIMESTAMPTZ;
DROP INDEX refund_requests_approved;
CREATE INDEX refund_requests_approved ON refund_requests (COALESCE(next_attempt_at, decided_at))
    WHERE state = 'approved';
