-- Weekly cohorts of human users by the ISO week of their first event, and the share of each
-- cohort active in each later week (week 0 is 100%).
with humans as (
    select user_id, date_trunc('week', event_time) as week
    from {{ ref('stg_events') }}
    where not is_bot
),

first_week as (
    select user_id, min(week) as cohort_week from humans group by 1
),

activity as (
    select distinct h.user_id, f.cohort_week, h.week
    from humans h join first_week f using (user_id)
),

sizes as (
    select cohort_week, count(*) as cohort_users from first_week group by 1
)

select
    a.cohort_week,
    datediff('week', a.cohort_week, a.week) as weeks_after,
    s.cohort_users,
    count(*) as active_users,
    round(100.0 * count(*) / s.cohort_users, 2) as retention_pct
from activity a
join sizes s using (cohort_week)
group by a.cohort_week, a.week, s.cohort_users
