-- Product 360: every product seen in the lake with its category, lifetime views, cart
-- additions, orders, order lines, units and revenue, the view -> cart -> purchase rates,
-- distinct viewers and buyers, and when it was first and last seen.
select
    product_id,
    mode(category) as category,
    max(price_cents) filter (where event_type <> 'page_view') as last_price_cents,
    count(*) filter (where event_type = 'page_view') as views,
    count(*) filter (where event_type = 'add_to_cart') as cart_adds,
    count(*) filter (where event_type = 'purchase') as purchases,
    count(distinct order_id) filter (where event_type = 'purchase') as orders,
    coalesce(sum(quantity) filter (where event_type = 'purchase'), 0)::bigint as units,
    coalesce(sum(amount_cents) filter (where event_type = 'purchase'), 0)::bigint as revenue_cents,
    {{ pct("count(*) filter (where event_type = 'add_to_cart')", "count(*) filter (where event_type = 'page_view')") }} as view_to_cart_pct,
    {{ pct("count(*) filter (where event_type = 'purchase')", "count(*) filter (where event_type = 'add_to_cart')") }} as cart_to_purchase_pct,
    count(distinct user_id) filter (where event_type = 'page_view' and not is_bot) as viewers,
    count(distinct user_id) filter (where event_type = 'purchase' and not is_bot) as buyers,
    min(event_time) as first_seen_at,
    max(event_time) as last_seen_at
from {{ ref('stg_events') }}
where product_id is not null
group by product_id
