-- Per day: events (bots included, as the streaming tables count them), product views ->
-- cart additions -> purchased order lines, orders, units, revenue and the step rates.
-- Same definitions as the Rust gold `daily_funnel`; tests/ holds the two equal.
with product_events as (
    select * from {{ ref('stg_events') }} where product_id is not null
),

totals as (
    select event_date as day, count(*) as events, count(*) filter (where is_bot) as bot_events
    from {{ ref('stg_events') }}
    group by 1
),

steps as (
    select
        event_date as day,
        count(*) filter (where event_type = 'page_view') as product_views,
        count(*) filter (where event_type = 'add_to_cart') as cart_adds,
        count(*) filter (where event_type = 'purchase') as purchases,
        count(distinct order_id) filter (where event_type = 'purchase') as orders,
        coalesce(sum(quantity) filter (where event_type = 'purchase'), 0) as units,
        coalesce(sum(amount_cents) filter (where event_type = 'purchase'), 0) as revenue_cents
    from product_events
    group by 1
)

select
    t.day,
    t.events,
    t.bot_events,
    coalesce(s.product_views, 0) as product_views,
    coalesce(s.cart_adds, 0) as cart_adds,
    coalesce(s.purchases, 0) as purchases,
    coalesce(s.orders, 0) as orders,
    coalesce(s.units, 0)::bigint as units,
    coalesce(s.revenue_cents, 0)::bigint as revenue_cents,
    {{ pct('s.cart_adds', 's.product_views') }} as view_to_cart_pct,
    {{ pct('s.purchases', 's.cart_adds') }} as cart_to_purchase_pct
from totals t
left join steps s using (day)
