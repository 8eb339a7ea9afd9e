-- Dashboards: a liveness time for processors that are up but idle (the heartbeat used to
-- move only on commits, so an idle processor looked dead), a clean-shutdown mark, and the
-- index the alert feed reads newest-first.

ALTER TABLE analytics.processor_heartbeat ALTER COLUMN last_commit_at DROP NOT NULL;
ALTER TABLE analytics.processor_heartbeat
    ADD COLUMN last_seen_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE analytics.processor_heartbeat ADD COLUMN stopped_at timestamptz;
UPDATE analytics.processor_heartbeat SET last_seen_at = last_commit_at;
COMMENT ON COLUMN analytics.processor_heartbeat.stopped_at IS
    'Set when the instance shut down cleanly; NULL while it runs (or if it crashed).';
COMMENT ON COLUMN analytics.processor_heartbeat.last_seen_at IS
    'Last time the instance was alive (written every few seconds, also when idle).';
COMMENT ON COLUMN analytics.processor_heartbeat.last_commit_at IS
    'Last batch commit; NULL until the instance committed one.';

CREATE INDEX flash_sale_alerts_raised_idx ON analytics.flash_sale_alerts (raised_at DESC);
