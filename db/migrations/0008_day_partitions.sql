-- Day partitions (declarative range partitioning on a time column) for every table that
-- grows with traffic, so retention drops whole days, a catalog change, instead of
-- deleting rows (WAL, bloat, vacuum). Partitions are named <table>_pYYYYMMDD and cover one
-- UTC day; the processor creates them ahead and drops the expired ones through the two
-- functions below (the writer role cannot run DDL itself). Existing rows move into the new
-- tables: on a large installation this migration takes as long as copying the ledger.

-- A session's start can move earlier when a late event joins it, so it cannot be the
-- partition key of an upsert; the time of the event that opened it (whose id is the
-- session key) never changes. Sessions that exist already keep their start.
ALTER TABLE analytics.sessions ADD COLUMN opened_at timestamptz;
UPDATE analytics.sessions SET opened_at = session_start;
ALTER TABLE analytics.sessions ALTER COLUMN opened_at SET NOT NULL;
ALTER TABLE analytics.sessions DROP CONSTRAINT sessions_pkey,
    ADD PRIMARY KEY (opened_at, session_key);
COMMENT ON COLUMN analytics.sessions.opened_at IS
    'Time of the event that opened the session (its id is session_key); the partition key.';

-- The key of a partitioned table includes the partition key. A record is rejected in the
-- transaction that commits its offset, so one source position is never rejected twice.
ALTER TABLE analytics.rejected_events DROP CONSTRAINT rejected_events_pkey,
    ADD PRIMARY KEY (rejected_at, topic, kafka_partition, kafka_offset);

-- Creates the missing day partitions of one partitioned table for first_day..last_day.
-- Runs as the schema owner, so the processor (writer role) can keep partitions ahead
-- without DDL rights of its own; the lock timeout makes a busy table a retry later, not a
-- queue of blocked writers behind the DDL lock.
CREATE FUNCTION analytics.create_day_partitions(parent text, first_day date, last_day date)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    d date := first_day;
    part text;
    created integer := 0;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_partitioned_table p
                     JOIN pg_class c ON c.oid = p.partrelid
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'analytics' AND c.relname = parent) THEN
        RAISE EXCEPTION 'analytics.% is not a partitioned table', parent;
    END IF;
    IF last_day - first_day > 3660 THEN
        RAISE EXCEPTION 'refusing to create % day partitions at once', last_day - first_day + 1;
    END IF;
    -- Instances creating the same days at once take turns instead of failing.
    PERFORM pg_advisory_xact_lock(hashtext('analytics.' || parent));
    WHILE d <= last_day LOOP
        part := parent || '_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(format('analytics.%I', part)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE analytics.%I PARTITION OF analytics.%I FOR VALUES FROM (%L) TO (%L)',
                part, parent,
                to_char(d, 'YYYY-MM-DD') || ' 00:00:00+00',
                to_char(d + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
            created := created + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END
$$;
COMMENT ON FUNCTION analytics.create_day_partitions(text, date, date) IS
    'Creates the missing <table>_pYYYYMMDD day partitions of an analytics table (as the owner).';

-- Drops the day partitions of one partitioned table that end on or before before_day
-- (every row in them is older than before_day); returns their names.
CREATE FUNCTION analytics.drop_day_partitions(parent text, before_day date)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    r record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_partitioned_table p
                     JOIN pg_class c ON c.oid = p.partrelid
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'analytics' AND c.relname = parent) THEN
        RAISE EXCEPTION 'analytics.% is not a partitioned table', parent;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('analytics.' || parent));
    FOR r IN
        SELECT c.relname
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = format('analytics.%I', parent)::regclass
           AND left(c.relname, length(parent) + 2) = parent || '_p'
           AND substr(c.relname, length(parent) + 3) ~ '^[0-9]{8}$'
         ORDER BY c.relname
    LOOP
        IF to_date(right(r.relname, 8), 'YYYYMMDD') + 1 <= before_day THEN
            EXECUTE format('DROP TABLE analytics.%I', r.relname);
            RETURN NEXT r.relname;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION analytics.drop_day_partitions(text, date) IS
    'Drops the day partitions of an analytics table whose day ended on or before the given date (as the owner).';

REVOKE ALL ON FUNCTION analytics.create_day_partitions(text, date, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION analytics.drop_day_partitions(text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION analytics.create_day_partitions(text, date, date) TO clickstream_writer;
GRANT EXECUTE ON FUNCTION analytics.drop_day_partitions(text, date) TO clickstream_writer;

-- Views bind to tables, not names: keep their definitions, drop them, and create them
-- again over the partitioned tables.
CREATE TABLE analytics.migration_0008_views AS
SELECT c.oid AS view_oid, c.relname, pg_get_viewdef(c.oid) AS body,
       obj_description(c.oid, 'pg_class') AS note
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'analytics' AND c.relkind = 'v';

DO $$
DECLARE v record;
BEGIN
    FOR v IN SELECT relname FROM analytics.migration_0008_views ORDER BY view_oid DESC LOOP
        EXECUTE format('DROP VIEW analytics.%I', v.relname);
    END LOOP;
END
$$;

-- Replaces one table by a day-partitioned copy (same columns, keys, indexes, defaults,
-- comments) holding the same rows.
CREATE FUNCTION analytics.migration_0008_partition(tbl text, col text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    old text := tbl || '_unpartitioned';
    r record;
    lo date;
    hi date;
    note text;
BEGIN
    note := obj_description(format('analytics.%I', tbl)::regclass, 'pg_class');
    EXECUTE format('ALTER TABLE analytics.%I RENAME TO %I', tbl, old);
    -- Index names are per schema: move the old ones out of the way.
    FOR r IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE i.indrelid = format('analytics.%I', old)::regclass LOOP
        EXECUTE format('ALTER INDEX analytics.%I RENAME TO %I', r.relname, r.relname || '_old');
    END LOOP;
    EXECUTE format('CREATE TABLE analytics.%I (LIKE analytics.%I INCLUDING ALL) PARTITION BY RANGE (%I)',
                   tbl, old, col);
    IF note IS NOT NULL THEN
        EXECUTE format('COMMENT ON TABLE analytics.%I IS %L', tbl, note);
    END IF;
    EXECUTE format('SELECT (min(%1$I) AT TIME ZONE ''UTC'')::date, (max(%1$I) AT TIME ZONE ''UTC'')::date FROM analytics.%2$I',
                   col, old) INTO lo, hi;
    IF lo IS NOT NULL THEN
        PERFORM analytics.create_day_partitions(tbl, lo, hi);
        EXECUTE format('INSERT INTO analytics.%I SELECT * FROM analytics.%I', tbl, old);
    END IF;
    EXECUTE format('DROP TABLE analytics.%I', old);
END
$$;

SELECT analytics.migration_0008_partition(t, c) FROM (VALUES
    ('seen_events', 'event_time'),
    ('events', 'event_time'),
    ('purchases', 'event_time'),
    ('sessions', 'opened_at'),
    ('metrics_minute', 'minute'),
    ('product_minute', 'minute'),
    ('category_minute', 'minute'),
    ('product_window', 'window_start'),
    ('hourly_users', 'hour'),
    ('late_events', 'event_time'),
    ('rejected_events', 'rejected_at')
) AS t(t, c);

DO $$
DECLARE v record;
BEGIN
    FOR v IN SELECT relname, body, note FROM analytics.migration_0008_views ORDER BY view_oid LOOP
        EXECUTE format('CREATE VIEW analytics.%I AS %s', v.relname, v.body);
        IF v.note IS NOT NULL THEN
            EXECUTE format('COMMENT ON VIEW analytics.%I IS %L', v.relname, v.note);
        END IF;
    END LOOP;
END
$$;

DROP FUNCTION analytics.migration_0008_partition(text, text);
DROP TABLE analytics.migration_0008_views;
