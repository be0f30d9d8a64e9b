-- target: analytics.daily_revenue
-- mode: overwrite
-- Revenue per day in EUR from the orders that were not cancelled.
select
    cast(o.created_at as date)                      as day,
    count(*)                                        as orders,
    round(sum(o.amount * r.rate_to_eur), 2)         as revenue_eur
from shop.orders as o
join raw.rates as r
  on r.date = cast(o.created_at as date) and r.currency = o.currency
where o.status <> 'cancelled'
group by 1
order by 1
