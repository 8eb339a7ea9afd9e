-- Per day and category: product views, cart additions, purchased lines, units, revenue,
-- distinct human viewers and buyers, and conversion (buyers / viewers). Same definitions
-- as the Rust gold `category_daily`.
select
    event_date as day,
    category,
    count(*) filter (where event_type = 'page_view') as views,
    count(*) filter (where event_type = 'add_to_cart') as cart_adds,
    count(*) filter (where event_type = 'purchase') as purchases,
    coalesce(sum(quantity) filter (where event_type = 'purchase'), 0)::bigint as units,
    coalesce(sum(amount_cents) filter (where event_type = 'purchase'), 0)::bigint as revenue_cents,
    count(distinct user_id) filter (where event_type = 'page_view' and not is_bot) as viewers,
    count(distinct user_id) filter (where event_type = 'purchase' and not is_bot) as buyers,
    {{ pct("count(distinct user_id) filter (where event_type = 'purchase' and not is_bot)",
           "count(distinct user_id) filter (where event_type = 'page_view' and not is_bot)") }} as conversion_pct
from {{ ref('stg_events') }}
where product_id is not null and category is not null
group by 1, 2
