-- Product 360: every product seen in the lake with its lifetime views, cart additions,
-- orders, order lines, units and revenue, the view -> cart -> purchase rates, distinct
-- viewers and buyers, when it was first and last seen, and the catalog's attributes (name,
-- list price, popularity rank) from the newest catalog snapshot the daily batch wrote to
-- gold/dim_product (null when there is none, e.g. a lake batched without a database).
with activity as (
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
)
{% if lake_has('gold/dim_product') %}
, snapshots as (
    select * from {{ lake('gold/dim_product') }}
), catalog as (
    select * from snapshots where date = (select max(date) from snapshots)
)
select
    a.*,
    c.name,
    c.category as catalog_category,
    c.list_price_cents,
    c.popularity_rank
from activity a
left join catalog c using (product_id)
{% else %}
select
    a.*,
    null::varchar as name,
    null::varchar as catalog_category,
    null::bigint as list_price_cents,
    null::integer as popularity_rank
from activity a
{% endif %}
