-- The day's 5 most-viewed and 5 best-selling products (units, then revenue; product id
-- breaks ties), as the Rust gold `top_products`.
with products as (
    select
        event_date as day,
        product_id,
        min(category) as category,
        count(*) filter (where event_type = 'page_view') as views,
        count(*) filter (where event_type = 'purchase') as purchases,
        coalesce(sum(quantity) filter (where event_type = 'purchase'), 0)::bigint as units,
        coalesce(sum(amount_cents) filter (where event_type = 'purchase'), 0)::bigint as revenue_cents
    from {{ ref('stg_events') }}
    where product_id is not null
    group by 1, 2
),

ranked as (
    select
        'most_viewed' as list,
        row_number() over (partition by day order by views desc, product_id) as rank,
        *
    from products
    where views > 0
    union all
    select
        'best_selling' as list,
        row_number() over (partition by day order by units desc, revenue_cents desc, product_id) as rank,
        *
    from products
    where units > 0
)

select day, list, rank::integer as rank, product_id, category, views, purchases, units, revenue_cents
from ranked
where rank <= 5
