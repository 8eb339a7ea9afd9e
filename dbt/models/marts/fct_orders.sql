-- One row per order: its purchase lines, units and amount, when its first and last lines
-- happened, and whose order it was.
select
    order_id,
    min(user_id) as user_id,
    min(session_id) as session_id,
    count(*) as lines,
    sum(quantity)::bigint as units,
    sum(amount_cents)::bigint as amount_cents,
    min(event_time) as first_line_at,
    max(event_time) as last_line_at,
    cast(min(event_time) at time zone 'UTC' as date) as order_date,
    bool_or(is_bot) as is_bot
from {{ ref('stg_events') }}
where event_type = 'purchase' and order_id is not null
group by order_id
