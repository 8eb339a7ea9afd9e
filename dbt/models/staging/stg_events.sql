-- One row per distinct valid event: silver deduplicated on the contract's identity
-- (event id and the device's time of the event, `client_time` when the collector corrected
-- `event_time`), keeping the first copy in Kafka order, as the stream processor does.
{%- set columns = lake_columns('silver') %}
-- Files written before the collector existed lack its columns: they read as nulls.
with silver as (
    select
        * exclude ({{ (['browser', 'os', 'ip', 'client_time', 'sent_at', 'received_at'] | select('in', columns) | list + ['kafka_timestamp']) | join(', ') }}),
        {{ optional_column(columns, 'client_time', 'timestamptz') }},
        {{ optional_column(columns, 'sent_at', 'timestamptz') }},
        {{ optional_column(columns, 'received_at', 'timestamptz') }},
        {{ optional_column(columns, 'browser', 'varchar') }},
        {{ optional_column(columns, 'os', 'varchar') }},
        {{ optional_column(columns, 'ip', 'varchar') }}
    from {{ lake('silver') }}
),

ranked as (
    select
        *,
        row_number() over (
            partition by event_id, coalesce(client_time, event_time)
            order by kafka_partition, kafka_offset
        ) as copy_number
    from silver
)

select
    event_id,
    event_type,
    event_time,
    cast(event_time at time zone 'UTC' as date) as event_date,
    user_id,
    session_id,
    product_id,
    category,
    price_cents,
    quantity,
    order_id,
    amount_cents,
    device,
    country,
    page,
    referrer,
    utm_source,
    browser,
    os,
    is_bot,
    kafka_partition,
    kafka_offset
from ranked
where copy_number = 1
