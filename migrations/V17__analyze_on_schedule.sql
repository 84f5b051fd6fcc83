-- The journal's append-mostly tables have their statistics refreshed after a million
-- changed rows at least (and by `switchyard prune`, which ends with VACUUM ANALYZE), not
-- after every 10 % of growth (issue 9).
--
-- ANALYZE samples 30,000 rows whatever a table's size, so each pass costs the same: on a
-- private cluster with a million preloaded transactions, 0.39-0.43 s for
-- transaction_rows, 0.10 s for settlements, 0.13-0.15 s for ledger_postings. PostgreSQL's
-- default (50 rows + 10 % of the table) ran it two to three times a minute at 5,000
-- purchases/s on those tables, about 5 µs of database CPU per purchase: `perf` put
-- autovacuum's ANALYZE at 8 % of PostgreSQL's samples in the standard benchmark
-- (docs/loadtest.md, 2026-12-03). With 1,000,000 + 10 %, a pass comes at most once per
-- million purchases (per 500,000 for ledger_postings, two rows per purchase), under 1 µs
-- per purchase in all, and on a table of a hundred million rows as often as before.
--
-- What it costs: a table's statistics can be up to a million rows (or 10 %) old. The
-- switch's statements reach these tables by key, and the planner scales its row counts
-- by the table's current size between passes, so plans do not depend on fresh
-- statistics; a new database is analyzed by its first prune.
ALTER TABLE transaction_rows SET (autovacuum_analyze_threshold = 1000000);
ALTER TABLE settlements SET (autovacuum_analyze_threshold = 1000000);
ALTER TABLE ledger_postings SET (autovacuum_analyze_threshold = 1000000);
