-- What an instance reports while it cannot make progress (see ARCHITECTURE.md, "Failure").

ALTER TABLE analytics.processor_heartbeat
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN stalled_since timestamptz,
    ADD COLUMN last_error text;
COMMENT ON COLUMN analytics.processor_heartbeat.consecutive_failures IS
    'Batch attempts that failed since the last commit (0 while healthy).';
COMMENT ON COLUMN analytics.processor_heartbeat.stalled_since IS
    'First failure of the current run of failures; NULL while healthy.';
COMMENT ON COLUMN analytics.processor_heartbeat.last_error IS
    'The latest failure, as logged; NULL while healthy.';

-- Dead letters the dead-letter topic did not acknowledge: the row (committed with the
-- batch) is the durable record, and the processor delivers it to Kafka when it can.
ALTER TABLE analytics.rejected_events
    ADD COLUMN dlq_pending boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN analytics.rejected_events.dlq_pending IS
    'True until the dead-letter topic acknowledged this record (it was unreachable when the batch committed).';
CREATE INDEX rejected_events_dlq_pending_idx ON analytics.rejected_events (topic, kafka_partition, kafka_offset)
    WHERE dlq_pending;

-- Events stamped ahead of the processing clock: counted here, but they drive the watermark
-- only up to the clock (see ARCHITECTURE.md, "Watermarks and wrong clocks").
ALTER TABLE analytics.metrics_minute
    ADD COLUMN future_events bigint NOT NULL DEFAULT 0;

-- Alerts are an outbox: sinks (log, webhooks) deliver rows whose notified_at is NULL after
-- the batch that raised them committed, then set it; a crash in between re-delivers.
ALTER TABLE analytics.flash_sale_alerts ADD COLUMN notified_at timestamptz;
UPDATE analytics.flash_sale_alerts SET notified_at = raised_at;
COMMENT ON COLUMN analytics.flash_sale_alerts.notified_at IS
    'When the alert sinks were told; NULL until then (delivered at least once).';
CREATE INDEX flash_sale_alerts_unnotified_idx ON analytics.flash_sale_alerts (window_start, product_id)
    WHERE notified_at IS NULL;

-- Since when a partition has been idle (caught up, no records): its watermark then follows
-- the processing clock. NULL while records flow.
ALTER TABLE analytics.consumer_offsets ADD COLUMN idle_since timestamptz;
COMMENT ON COLUMN analytics.consumer_offsets.idle_since IS
    'Set while the partition is idle and its watermark follows the clock; NULL while records flow.';
