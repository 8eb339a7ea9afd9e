-- One row per human user: first and last seen, sessions, orders, lifetime value, and the
-- segment over the `segment_days` (30) days ending on the lake's last day, as the Rust
-- gold `user_segments` assigns it (orders are counted per day, as gold's per-day summaries
-- add up): repeat buyers (2+ orders), one-time buyers (1), cart abandoners (carted, no
-- order), window shoppers (product views only); users with none of these have no segment.
with humans as (
    select * from {{ ref('stg_events') }} where not is_bot
),

last_day as (
    select max(event_date) as day from {{ ref('stg_events') }}
),

per_day as (
    select
        user_id,
        event_date,
        count(*) filter (where event_type = 'page_view' and product_id is not null) as views,
        count(*) filter (where event_type = 'add_to_cart') as cart_adds,
        count(*) filter (where event_type = 'purchase') as purchases,
        count(distinct order_id) filter (where event_type = 'purchase') as orders
    from humans
    group by 1, 2
),

recent as (
    select
        user_id,
        sum(views) as views,
        sum(cart_adds) as cart_adds,
        sum(purchases) as purchases,
        sum(orders) as orders
    from per_day, last_day
    where event_date > last_day.day - {{ var('segment_days') }}
    group by 1
),

lifetime as (
    select
        user_id,
        min(event_time) as first_seen_at,
        max(event_time) as last_seen_at,
        count(distinct order_id) filter (where event_type = 'purchase') as orders,
        coalesce(sum(amount_cents) filter (where event_type = 'purchase'), 0)::bigint as lifetime_value_cents,
        first(country order by event_time) as country,
        first(device order by event_time) as first_device
    from humans
    group by 1
),

sessions as (
    select user_id, count(*) as sessions from {{ ref('fct_sessions') }} group by 1
)

select
    l.user_id,
    l.first_seen_at,
    l.last_seen_at,
    coalesce(s.sessions, 0) as sessions,
    l.orders,
    l.lifetime_value_cents,
    l.country,
    l.first_device,
    case
        when r.orders >= 2 then 'repeat_buyers'
        when r.orders = 1 then 'one_time_buyers'
        when r.cart_adds > 0 then 'cart_abandoners'
        when r.views > 0 then 'window_shoppers'
    end as segment,
    coalesce(r.views, 0) as segment_views,
    coalesce(r.orders, 0) as segment_orders,
    coalesce(r.purchases, 0) as segment_purchases
from lifetime l
left join sessions s using (user_id)
left join recent r using (user_id)
