-- depends_on: {{ ref('top_products_daily') }}
-- The day's top 5 lists equal the Rust gold `top_products`: same products at the same
-- ranks with the same views, lines, units and revenue.
{% if lake_has('gold/top_products') %}
with gold as (
    select * exclude (date) from {{ lake('gold/top_products') }}
),

model as (
    select * from {{ ref('top_products_daily') }} where day in (select distinct day from gold)
)

select coalesce(g.day, m.day) as day, coalesce(g.list, m.list) as list, coalesce(g.rank, m.rank) as rank, g as gold, m as dbt
from gold g
full outer join model m on g.day = m.day and g.list = m.list and g.rank = m.rank
where g.day is null or m.day is null
   or (g.product_id, g.views, g.purchases, g.units, g.revenue_cents)
      is distinct from (m.product_id, m.views, m.purchases, m.units, m.revenue_cents)
{% else %}
select 1 as no_gold where false
{% endif %}
