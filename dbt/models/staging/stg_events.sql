-- One row per distinct valid event: silver deduplicated on the contract's identity
-- (event id and the device's time of the event, `client_time` when the collector corrected
-- `event_time`), keeping the first copy in Kafka order, as the stream processor does.
with silver as (
    select * from {{ lake('silver') }}
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
