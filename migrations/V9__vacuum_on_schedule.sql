-- The journal's append-mostly tables are vacuumed on a schedule, not by row counts
-- (issue 9).
--
-- An insert-driven autovacuum waits for 20 % of a table's rows to be new; on a table of
-- millions of rows it then scans and marks visible hundreds of thousands of new pages at
-- once. Measured with a million preloaded transactions at 5,000 purchases/s: while it ran,
-- commits stalled (p99 from about 10 ms to 50-110 ms every other second, p99 of the run
-- 32-45 ms); with it off, 12 ms. Smaller, more frequent passes made it worse. So these
-- tables are vacuumed by `switchyard prune` (retention, which ends with VACUUM ANALYZE) at
-- a quiet hour (docs/operations.md, "Retention"). Dead rows still trigger autovacuum as
-- usual, and so does the anti-wraparound limit, which cannot be turned off.
ALTER TABLE transactions SET (autovacuum_vacuum_insert_threshold = -1);
ALTER TABLE ledger_postings SET (autovacuum_vacuum_insert_threshold = -1);
