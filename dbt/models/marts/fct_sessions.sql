-- Sessions as the stream processor defines them: one user's events, ordered by event time,
-- with a new session after more than `session_gap_minutes` (30) without events. The key is
-- the session's first event id (the streaming `sessions.session_key`).
with ordered as (
    select
        *,
        lag(event_time) over (partition by user_id order by event_time, event_id) as previous_at
    from {{ ref('stg_events') }}
),

numbered as (
    select
        *,
        sum(case
                when previous_at is null
                  or event_time - previous_at > interval ({{ var('session_gap_minutes') }}) minute
                then 1 else 0
            end) over (partition by user_id order by event_time, event_id rows unbounded preceding) as session_number
    from ordered
)

select
    first(event_id order by event_time, event_id) as session_key,
    user_id,
    session_number,
    min(event_time) as started_at,
    max(event_time) as ended_at,
    epoch(max(event_time) - min(event_time))::bigint as duration_s,
    count(*) as events,
    count(*) filter (where event_type = 'page_view') as page_views,
    count(*) filter (where event_type = 'add_to_cart') as cart_adds,
    count(*) filter (where event_type = 'purchase') as purchases,
    coalesce(sum(amount_cents) filter (where event_type = 'purchase'), 0)::bigint as revenue_cents,
    first(device order by event_time, event_id) as device,
    first(country order by event_time, event_id) as country,
    bool_or(is_bot) as is_bot,
    count(*) filter (where event_type = 'purchase') > 0 as converted
from numbered
group by user_id, session_number
