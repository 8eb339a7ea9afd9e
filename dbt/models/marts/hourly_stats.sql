-- Per UTC hour: events, distinct users, sessions started, orders and revenue, and whether it
-- was the day's peak hour (most events; the earlier hour on a tie).
with hours as (
    select
        date_trunc('hour', event_time) as hour,
        count(*) as events,
        count(distinct user_id) as users,
        count(*) filter (where event_type = 'page_view') as page_views,
        count(*) filter (where event_type = 'add_to_cart') as cart_adds,
        count(*) filter (where event_type = 'purchase') as purchases,
        count(distinct order_id) filter (where event_type = 'purchase') as orders,
        coalesce(sum(amount_cents) filter (where event_type = 'purchase'), 0)::bigint as revenue_cents
    from {{ ref('stg_events') }}
    group by 1
),

sessions as (
    select date_trunc('hour', started_at) as hour, count(*) as sessions_started
    from {{ ref('fct_sessions') }}
    group by 1
)

select
    h.hour,
    cast(h.hour at time zone 'UTC' as date) as day,
    hour(h.hour at time zone 'UTC') as hour_of_day,
    h.events,
    h.users,
    coalesce(s.sessions_started, 0) as sessions_started,
    h.page_views,
    h.cart_adds,
    h.purchases,
    h.orders,
    h.revenue_cents,
    row_number() over (
        partition by cast(h.hour at time zone 'UTC' as date) order by h.events desc, h.hour
    ) = 1 as is_peak_hour
from hours h
left join sessions s using (hour)
