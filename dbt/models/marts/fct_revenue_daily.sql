-- Per day: orders, order lines, units, revenue and buyers (orders dated by their first line).
select
    order_date as day,
    count(*) as orders,
    sum(lines) as order_lines,
    sum(units)::bigint as units,
    sum(amount_cents)::bigint as revenue_cents,
    count(distinct user_id) as buyers,
    round(sum(amount_cents) / count(*)) :: bigint as average_order_cents
from {{ ref('fct_orders') }}
group by 1
