-- The dedup ledger is keyed by (event_time, event_id): a re-sent record is identical, so
-- it matches on both, and a time-first key puts each batch's inserts at the end of the
-- index instead of on random pages of a uuid index (measured ~3x cheaper per batch with a
-- probe + COPY). Pruning by time uses the same index, so the BRIN index goes.
ALTER TABLE analytics.seen_events DROP CONSTRAINT seen_events_pkey;
ALTER TABLE analytics.seen_events ADD PRIMARY KEY (event_time, event_id);
DROP INDEX analytics.seen_events_time_brin;
COMMENT ON TABLE analytics.seen_events IS
    'Dedup ledger: the key (event time, event id) of every distinct event within the horizon (the accepted event age).';
