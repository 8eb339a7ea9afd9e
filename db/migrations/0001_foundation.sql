-- Foundation: the two application roles, their privileges on the analytics schema, and the
-- product catalog dimension. Passwords are set by `clickstream migrate` from the
-- environment, never here.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'clickstream_writer') THEN
        CREATE ROLE clickstream_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'clickstream_reader') THEN
        CREATE ROLE clickstream_reader NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA analytics TO clickstream_writer, clickstream_reader;

-- Tables created later by migrations (run by the same admin role) inherit these grants.
ALTER DEFAULT PRIVILEGES IN SCHEMA analytics
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO clickstream_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA analytics
    GRANT USAGE, SELECT ON SEQUENCES TO clickstream_writer;
ALTER DEFAULT PRIVILEGES IN SCHEMA analytics
    GRANT SELECT ON TABLES TO clickstream_reader;

CREATE TABLE analytics.dim_product (
    product_id      text PRIMARY KEY,
    name            text NOT NULL,
    category        text NOT NULL,
    price           numeric(12, 2) NOT NULL CHECK (price >= 0),
    popularity_rank integer NOT NULL CHECK (popularity_rank > 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dim_product_category_idx ON analytics.dim_product (category);
COMMENT ON TABLE analytics.dim_product IS
    'Product catalog written by `clickstream generate`; dashboards join on product_id for names.';

GRANT SELECT, INSERT, UPDATE, DELETE ON analytics.dim_product TO clickstream_writer;
GRANT SELECT ON analytics.dim_product TO clickstream_reader;
