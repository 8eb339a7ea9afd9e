-- depends_on: {{ ref('fct_revenue_by_category') }}
-- Per day and category, the dbt model equals the Rust gold `category_daily` to the cent.
{% if lake_has('gold/category_daily') %}
with gold as (
    select * exclude (date) from {{ lake('gold/category_daily') }}
),

model as (
    select * from {{ ref('fct_revenue_by_category') }} where day in (select distinct day from gold)
)

select coalesce(g.day, m.day) as day, coalesce(g.category, m.category) as category, g as gold, m as dbt
from gold g
full outer join model m on g.day = m.day and g.category = m.category
where g.day is null or m.day is null
   or (g.views, g.cart_adds, g.purchases, g.units, g.revenue_cents, g.viewers, g.buyers)
      is distinct from (m.views, m.cart_adds, m.purchases, m.units, m.revenue_cents, m.viewers, m.buyers)
   or abs(coalesce(g.conversion_pct, -1) - coalesce(m.conversion_pct, -1)) > 0.001
{% else %}
select 1 as no_gold where false
{% endif %}
