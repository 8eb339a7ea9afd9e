-- depends_on: {{ ref('daily_funnel') }}
-- The funnel of every day the Rust gold batch computed equals the dbt model, to the event
-- and the cent (rates to 0.01 point). Rows returned are differences.
{% if lake_has('gold/daily_funnel') %}
with gold as (
    select * exclude (date) from {{ lake('gold/daily_funnel') }}
),

model as (
    select * from {{ ref('daily_funnel') }} where day in (select day from gold)
)

select coalesce(g.day, m.day) as day, g as gold, m as dbt
from gold g
full outer join model m on g.day = m.day
where g.day is null or m.day is null
   or (g.events, g.bot_events, g.product_views, g.cart_adds, g.purchases, g.orders, g.units, g.revenue_cents)
      is distinct from
      (m.events, m.bot_events, m.product_views, m.cart_adds, m.purchases, m.orders, m.units, m.revenue_cents)
   or abs(coalesce(g.view_to_cart_pct, -1) - coalesce(m.view_to_cart_pct, -1)) > 0.001
   or abs(coalesce(g.cart_to_purchase_pct, -1) - coalesce(m.cart_to_purchase_pct, -1)) > 0.001
{% else %}
select 1 as no_gold where false
{% endif %}
