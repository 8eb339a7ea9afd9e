-- Orders and revenue of fct_orders add up to the funnel's (every purchase line names its
-- order and product in the contract).
select f.day, f.orders, f.revenue_cents, o.orders as fct_orders, o.revenue_cents as fct_revenue
from {{ ref('daily_funnel') }} f
left join (
    select order_date as day, count(*) as orders, sum(amount_cents) as revenue_cents
    from {{ ref('fct_orders') }}
    group by 1
) o using (day)
where (select count(*) from {{ ref('fct_orders') }} where order_date <> cast(last_line_at at time zone 'UTC' as date)) = 0
  and (f.revenue_cents, f.orders) is distinct from (coalesce(o.revenue_cents, 0), coalesce(o.orders, 0))
