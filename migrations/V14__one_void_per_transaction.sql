-- At most one open or successful void per transaction, enforced by the database: the
-- desk's check (refund_desk::check_not_voided) reads before it inserts, so two void
-- requests arriving at the same instant could both pass it (issue 12 review). A void that
-- was rejected, expired, failed or declined leaves the index and may be asked again.
CREATE UNIQUE INDEX refund_requests_one_void ON refund_requests (original_rrn)
    WHERE kind = 'void'
      AND (state IN ('pending', 'approved')
           OR (state = 'executed' AND response_code = '00'));
