-- Room for in-place updates on the tables the processor rewrites every batch: a session's
-- row changes with each of its events, a minute's or a window's product rows with every
-- batch that counts into them. On full pages each such update went to another page and
-- had to touch every index (34% of product_minute updates, 69% of sessions, were HOT
-- on a 2M-record run); with 30% of each page free most stay on their page (HOT) and skip
-- the indexes. Append-only tables (the ledger, purchases, hourly users, rejects) stay full.

-- The day-partition function below is 0008's with the storage parameter added.
CREATE OR REPLACE FUNCTION analytics.create_day_partitions(parent text, first_day date, last_day date)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    d date := first_day;
    part text;
    created integer := 0;
    storage text := '';
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
    IF parent = ANY (analytics.rewritten_tables()) THEN
        storage := ' WITH (fillfactor = 70)';
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
                to_char(d + 1, 'YYYY-MM-DD') || ' 00:00:00+00') || storage;
            created := created + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Defined after its first use above: plpgsql resolves it when the function runs.
CREATE FUNCTION analytics.rewritten_tables() RETURNS text[]
LANGUAGE sql IMMUTABLE
AS $$ SELECT ARRAY['sessions', 'metrics_minute', 'product_minute', 'category_minute', 'product_window'] $$;
COMMENT ON FUNCTION analytics.rewritten_tables() IS
    'The partitioned tables whose rows the processor updates in place (their partitions keep 30% of each page free).';

-- The partitions that exist already: new rows and updates use the free space from now on.
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.relname
               FROM pg_inherits i
               JOIN pg_class p ON p.oid = i.inhparent
               JOIN pg_namespace n ON n.oid = p.relnamespace
               JOIN pg_class c ON c.oid = i.inhrelid
              WHERE n.nspname = 'analytics' AND p.relname = ANY (analytics.rewritten_tables())
    LOOP
        EXECUTE format('ALTER TABLE analytics.%I SET (fillfactor = 70)', r.relname);
    END LOOP;
END
$$;
