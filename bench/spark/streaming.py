"""Spark Structured Streaming counterpart of `clickstream process`, for `bench/run.sh spark`.

Reads the raw topic from the earliest offset, drains it (trigger availableNow) and writes
the aggregates our processor writes to analytics.* into the `spark` schema
(bench/spark/schema.sql): per minute and event type, per minute and product, 10-minute
product windows sliding by 5 minutes, and sessions with a 30-minute gap. See README.md
beside this file for how the two map and where their semantics differ.

Two streaming queries share the parsing, validation and deduplication below:

- `aggregates`: one Kafka read feeds the three windowed tables. Every micro-batch is
  aggregated by itself and added to the stored rows (`x = x + EXCLUDED.x`), exactly once
  through a batch ledger. Stateful aggregations (one query each, as a query has one
  aggregation) would read and parse the topic three times for the same result.
- `sessions`: a `session_window` aggregation in append mode (the only mode Spark has for
  session windows): each session is upserted once it is final.

Run it through submit.sh (spark-submit with the jars and JVM options). Settings come
from the environment bench/run.sh exports (.env): DATABASE_URL (the writer role, as our
processor uses) and KAFKA_BOOTSTRAP.
"""

import argparse
import os
import sys
import time
from datetime import datetime
from urllib.parse import unquote, urlsplit

import psycopg
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

# Our processor's defaults (crates/cli/src/process.rs, crates/processor/src/engine.rs,
# crates/model/src/validate.rs), so both judge the same records the same way.
ALLOWED_LATENESS = "2 minutes"
SESSION_GAP = "30 minutes"
WINDOW, SLIDE = "10 minutes", "5 minutes"
MAX_EVENT_AGE = "INTERVAL 7 DAYS"
MAX_EVENT_FUTURE = "INTERVAL 1 HOUR"
MAX_AMOUNT = 1_000_000.0
MAX_QUANTITY = 1_000

STATE_STORES = {
    "hdfs": "org.apache.spark.sql.execution.streaming.state.HDFSBackedStateStoreProvider",
    "rocksdb": "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
}

# Only the fields the aggregates and the validation read; Spark's JSON parser skips the
# rest. Strings for the times: a cast tells a bad one apart (null) without failing the job.
SCHEMA = T.StructType(
    [
        T.StructField("schema_version", T.LongType()),
        T.StructField("event_id", T.StringType()),
        T.StructField("event_type", T.StringType()),
        T.StructField("timestamp", T.StringType()),
        T.StructField("user_id", T.StringType()),
        T.StructField("session_id", T.StringType()),
        T.StructField("product_id", T.StringType()),
        T.StructField("category", T.StringType()),
        T.StructField("price", T.DoubleType()),
        T.StructField("quantity", T.LongType()),
        T.StructField("order_id", T.StringType()),
        T.StructField("amount", T.DoubleType()),
        T.StructField("device", T.StringType()),
        T.StructField("country", T.StringType()),
        T.StructField("user_agent", T.StringType()),
        T.StructField("bot", T.BooleanType()),
        T.StructField("client_timestamp", T.StringType()),
    ]
)
EVENT_TYPES = ("page_view", "add_to_cart", "purchase")
UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# clickstream_model::is_bot_agent's markers, matched on the lower-cased user agent.
BOT_AGENT = "bot|crawler|spider|python-requests|scrapy|curl/|wget/"


def spark_session(state_store: str) -> SparkSession:
    """The benchmark's Spark (master, jars and JVM options come from submit.sh)."""
    return (
        SparkSession.builder.appName("clickstream-spark-bench")
        .config("spark.sql.session.timeZone", "UTC")
        # The default 200 shuffle partitions means 200 tiny tasks (and state stores) per
        # stateful step on 2 cores; 4 keeps both cores busy with little overhead.
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.streaming.stateStore.providerClass", STATE_STORES[state_store])
        .config("spark.ui.enabled", "false")
        .config("spark.log.level", "WARN")
        .getOrCreate()
    )


def parse_valid(raw: DataFrame) -> DataFrame:
    """Kafka records -> the valid events, malformed ones dropped (our processor rejects
    them to the dead-letter topic; here they only must not count or stop the job)."""
    # allowNonNumericNumbers off: `"price":NaN` is not JSON, as our validator says. A
    # record that is not JSON at all (or not UTF-8, or empty) parses to all nulls.
    e = raw.select(
        F.from_json(
            F.col("value").cast("string"), SCHEMA, {"allowNonNumericNumbers": "false"}
        ).alias("e")
    ).select("e.*")
    e = e.withColumns(
        {
            "event_time": F.col("timestamp").try_cast("timestamp"),
            "price_cents": F.round(F.col("price") * 100).try_cast("long"),
            "amount_cents": F.round(F.col("amount") * 100).try_cast("long"),
        }
    )
    now = F.current_timestamp()
    is_product_event = F.col("event_type").isin("add_to_cart", "purchase")
    is_purchase = F.col("event_type") == "purchase"

    def money_ok(c: str) -> Column:
        return F.col(c).isNull() | F.col(c).between(0.0, MAX_AMOUNT)

    valid = (
        (F.col("schema_version").isNull() | (F.col("schema_version") == 1))
        & F.col("event_id").rlike(UUID)
        & F.col("user_id").rlike(UUID)
        & F.col("session_id").rlike(UUID)
        & F.col("event_type").isin(*EVENT_TYPES)
        & F.col("event_time").between(now - F.expr(MAX_EVENT_AGE), now + F.expr(MAX_EVENT_FUTURE))
        & (
            ~is_product_event
            | (
                F.col("product_id").isNotNull()
                & F.col("category").isNotNull()
                & F.col("price").isNotNull()
                & F.col("quantity").isNotNull()
            )
        )
        & (~is_purchase | (F.col("order_id").isNotNull() & F.col("amount").isNotNull()))
        & money_ok("price")
        & money_ok("amount")
        & (F.col("quantity").isNull() | F.col("quantity").between(1, MAX_QUANTITY))
        # A purchase line's amount is price x quantity, to the cent.
        & (
            ~is_purchase
            | (F.abs(F.col("amount_cents") - F.col("price_cents") * F.col("quantity")) <= 1)
        )
    )
    # Only what the aggregates need travels on: deduplication shuffles every column.
    return e.where(valid).select(
        "event_id",
        # The dedup identity is the id with the device's own time when the collector
        # corrected the event time (clickstream_model::Event::key).
        F.coalesce(F.col("client_timestamp").try_cast("timestamp"), F.col("event_time")).alias(
            "key_time"
        ),
        "event_time",
        "event_type",
        "user_id",
        "product_id",
        "category",
        F.coalesce(F.col("quantity"), F.lit(0)).alias("units"),
        F.when(is_purchase, F.col("amount_cents")).otherwise(0).alias("revenue_cents"),
        "device",
        "country",
        F.coalesce(F.col("bot"), F.lower(F.col("user_agent")).rlike(BOT_AGENT), F.lit(False)).alias(
            "is_bot"
        ),
    )


def deduplicated(spark: SparkSession, args: argparse.Namespace) -> DataFrame:
    """The topic as distinct valid events with an event-time watermark."""
    raw = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", os.environ["KAFKA_BOOTSTRAP"])
        .option("subscribe", args.topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", args.max_offsets)
        .load()
    )
    return (
        parse_valid(raw)
        .withWatermark("event_time", ALLOWED_LATENESS)
        # Keys are kept until the watermark passes their event time (+ the delay); rows
        # behind the watermark are dropped here, before any aggregate sees them.
        .dropDuplicatesWithinWatermark(["event_id", "key_time"])
    )


class Postgres:
    """The writer role, twice: Spark's JDBC writer fills a staging table from the
    executors, then one transaction on the driver's own connection moves it into place."""

    def __init__(self, url: str):
        u = urlsplit(url)
        self.url = url
        self.jdbc_url = f"jdbc:postgresql://{u.hostname}:{u.port or 5432}{u.path}"
        self.jdbc_options = {
            "user": unquote(u.username or ""),
            "password": unquote(u.password or ""),
            "driver": "org.postgresql.Driver",
            # One multi-row INSERT per 10,000 rows instead of 10,000 statements.
            "reWriteBatchedInserts": "true",
            "batchsize": "10000",
        }
        self._conn = None

    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url)
            # As our processor's batch connection does (its default): a PostgreSQL crash
            # may lose the last commits, never half a batch.
            self._conn.execute("SET synchronous_commit = off")
            self._conn.commit()
        return self._conn

    def stage(self, df: DataFrame, table: str) -> None:
        (
            df.write.format("jdbc")
            .options(url=self.jdbc_url, dbtable=f"spark.stage_{table}", truncate="true")
            .options(**self.jdbc_options)
            .mode("overwrite")
            .save()
        )


ADD_METRICS = """
INSERT INTO spark.metrics_minute AS t SELECT * FROM spark.stage_metrics_minute
ON CONFLICT (minute, event_type) DO UPDATE SET
    events = t.events + EXCLUDED.events, units = t.units + EXCLUDED.units,
    revenue_cents = t.revenue_cents + EXCLUDED.revenue_cents,
    bot_events = t.bot_events + EXCLUDED.bot_events"""
ADD_PRODUCTS = """
INSERT INTO spark.product_minute AS t SELECT * FROM spark.stage_product_minute
ON CONFLICT (minute, product_id) DO UPDATE SET
    views = t.views + EXCLUDED.views, cart_adds = t.cart_adds + EXCLUDED.cart_adds,
    purchases = t.purchases + EXCLUDED.purchases, units = t.units + EXCLUDED.units,
    revenue_cents = t.revenue_cents + EXCLUDED.revenue_cents"""
ADD_WINDOWS = """
INSERT INTO spark.product_window AS t SELECT * FROM spark.stage_product_window
ON CONFLICT (window_start, product_id) DO UPDATE SET
    views = t.views + EXCLUDED.views, purchases = t.purchases + EXCLUDED.purchases"""
# Append mode emits a session once, when it is final; a batch replayed after a crash
# emits it again with the same values.
UPSERT_SESSIONS = """
INSERT INTO spark.sessions AS t
SELECT user_id::uuid, session_start, session_end, events, page_views, cart_adds, purchases,
       revenue_cents, device, country, is_bot
  FROM spark.stage_sessions
ON CONFLICT (user_id, session_start) DO UPDATE SET
    session_end = EXCLUDED.session_end, events = EXCLUDED.events,
    page_views = EXCLUDED.page_views, cart_adds = EXCLUDED.cart_adds,
    purchases = EXCLUDED.purchases, revenue_cents = EXCLUDED.revenue_cents,
    device = EXCLUDED.device, country = EXCLUDED.country, is_bot = EXCLUDED.is_bot"""


def write_aggregates(pg: Postgres):
    """foreachBatch of the `aggregates` query: this micro-batch's deltas, added once."""

    def write(batch: DataFrame, batch_id: int) -> None:
        conn = pg.conn()
        done = conn.execute(
            "SELECT 1 FROM spark.applied_batches WHERE query = 'aggregates' AND batch_id = %s",
            (batch_id,),
        ).fetchone()
        conn.rollback()
        if done:
            return  # a batch replayed after a crash: its deltas are in already
        # Three aggregates over one batch: without the cache each would re-run the Kafka
        # read, the parsing and the stateful deduplication.
        batch.persist()
        minute = F.date_trunc("minute", "event_time").alias("minute")
        ev_type = F.col("event_type")
        metrics = batch.groupBy(minute, "event_type").agg(
            F.count("*").alias("events"),
            F.sum("units").alias("units"),
            F.sum("revenue_cents").alias("revenue_cents"),
            F.count_if(F.col("is_bot")).alias("bot_events"),
        )
        products = (
            batch.where(F.col("product_id").isNotNull())
            .groupBy(minute, "product_id")
            .agg(
                F.coalesce(F.first("category", ignorenulls=True), F.lit("")).alias("category"),
                F.count_if(ev_type == "page_view").alias("views"),
                F.count_if(ev_type == "add_to_cart").alias("cart_adds"),
                F.count_if(ev_type == "purchase").alias("purchases"),
                F.sum(F.when(ev_type == "purchase", F.col("units")).otherwise(0)).alias("units"),
                F.sum("revenue_cents").alias("revenue_cents"),
            )
        )
        windows = (
            batch.where(F.col("product_id").isNotNull() & ev_type.isin("page_view", "purchase"))
            .groupBy(F.window("event_time", WINDOW, SLIDE), "product_id")
            .agg(
                F.count_if(ev_type == "page_view").alias("views"),
                F.count_if(ev_type == "purchase").alias("purchases"),
            )
            .select(
                F.col("window.start").alias("window_start"),
                F.col("window.end").alias("window_end"),
                "product_id",
                "views",
                "purchases",
            )
        )
        pg.stage(metrics, "metrics_minute")
        pg.stage(products, "product_minute")
        pg.stage(windows, "product_window")
        batch.unpersist()
        with conn.transaction():
            for sql in (ADD_METRICS, ADD_PRODUCTS, ADD_WINDOWS):
                conn.execute(sql)
            conn.execute(
                "INSERT INTO spark.applied_batches (query, batch_id) VALUES ('aggregates', %s)",
                (batch_id,),
            )

    return write


def write_sessions(pg: Postgres):
    """foreachBatch of the `sessions` query: the sessions this batch closed."""

    def write(batch: DataFrame, batch_id: int) -> None:
        pg.stage(batch, "sessions")
        conn = pg.conn()
        with conn.transaction():
            conn.execute(UPSERT_SESSIONS)

    return write


def sessions(events: DataFrame) -> DataFrame:
    ev_type = F.col("event_type")
    return (
        events.groupBy("user_id", F.session_window("event_time", SESSION_GAP))
        .agg(
            F.max("event_time").alias("session_end"),
            F.count("*").cast("int").alias("events"),
            F.count_if(ev_type == "page_view").cast("int").alias("page_views"),
            F.count_if(ev_type == "add_to_cart").cast("int").alias("cart_adds"),
            F.count_if(ev_type == "purchase").cast("int").alias("purchases"),
            F.sum("revenue_cents").alias("revenue_cents"),
            # Device, country and bot flag of the session's first event, as ours.
            F.min_by("device", "event_time").alias("device"),
            F.min_by("country", "event_time").alias("country"),
            F.min_by("is_bot", "event_time").alias("is_bot"),
        )
        .select(
            "user_id",
            F.col("session_window.start").alias("session_start"),
            "session_end",
            "events",
            "page_views",
            "cart_adds",
            "purchases",
            "revenue_cents",
            "device",
            "country",
            "is_bot",
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topic", required=True)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (made if missing)")
    p.add_argument("--max-offsets", type=int, default=500_000, help="records per micro-batch")
    p.add_argument("--state-store", choices=sorted(STATE_STORES), default="hdfs")
    args = p.parse_args()

    spark = spark_session(args.state_store)
    events = deduplicated(spark, args)
    queries = [
        events.writeStream.queryName("aggregates")
        # A connection each: the two queries' foreachBatch calls run at the same time.
        .foreachBatch(write_aggregates(Postgres(os.environ["DATABASE_URL"])))
        .option("checkpointLocation", os.path.join(args.checkpoint, "aggregates"))
        .trigger(availableNow=True)
        .start(),
        sessions(events)
        .writeStream.queryName("sessions")
        # Spark's session windows support no update mode: a session is written when the
        # watermark has passed its last event plus the gap.
        .outputMode("append")
        .foreachBatch(write_sessions(Postgres(os.environ["DATABASE_URL"])))
        .option("checkpointLocation", os.path.join(args.checkpoint, "sessions"))
        .trigger(availableNow=True)
        .start(),
    ]
    for q in queries:
        q.awaitTermination()
    finished = time.time()

    # For bench/run.sh: records read (by one query; both read the whole topic), micro-
    # batches, and when the first batch started (after JVM start-up and jar resolution).
    progress = [pr for q in queries for pr in q.recentProgress if pr.numInputRows > 0]
    if not progress:
        sys.exit("spark: no records read")
    first = min(datetime.fromisoformat(pr.timestamp.replace("Z", "+00:00")) for pr in progress)
    records = sum(pr.numInputRows for pr in queries[0].recentProgress)
    batches = sum(1 for pr in queries[0].recentProgress if pr.numInputRows > 0)
    print(
        f"spark: version={spark.version} records={records} batches={batches} "
        f"max_offsets={args.max_offsets} state_store={args.state_store} "
        f"first_batch_start={first.timestamp():.3f} finished={finished:.3f}"
    )
    spark.stop()


if __name__ == "__main__":
    main()
