with rfm as (
    select * from {{ ref('int_customer_rfm') }}
),

sessions as (
    select * from {{ ref('int_web_sessions') }}
    where person_id is not null
),

email_activity as (
    select * from {{ ref('int_email_activity') }}
    where person_id is not null
),

tickets as (
    select * from {{ ref('int_support_tickets') }}
    where person_id is not null
),

order_lines as (
    select * from {{ ref('int_order_lines') }}
    where person_id is not null and category is not null
),

web_engagement as (
    select
        person_id,
        count(*) as web_sessions,
        sum(case when {{ within_days_of_as_of('started_at', 30) }} then 1 else 0 end) as web_sessions_30d,
        sum(case when {{ within_days_of_as_of('started_at', 90) }} then 1 else 0 end) as web_sessions_90d,
        min(started_at) as first_web_session_at,
        max(started_at) as last_web_session_at
    from sessions
    group by person_id
),

email_engagement as (
    select
        person_id,
        sum(case when event_type = 'open' and {{ within_days_of_as_of('occurred_at', 30) }} then 1 else 0 end) as email_opens_30d,
        sum(case when event_type = 'open' and {{ within_days_of_as_of('occurred_at', 90) }} then 1 else 0 end) as email_opens_90d,
        sum(case when event_type = 'click' and {{ within_days_of_as_of('occurred_at', 30) }} then 1 else 0 end) as email_clicks_30d,
        sum(case when event_type = 'click' and {{ within_days_of_as_of('occurred_at', 90) }} then 1 else 0 end) as email_clicks_90d,
        min(occurred_at) as first_email_event_at
    from email_activity
    group by person_id
),

support as (
    select
        person_id,
        count(*) as support_tickets,
        sum(case when is_bad_satisfaction then 1 else 0 end) as support_tickets_bad_satisfaction,
        sum(case when {{ within_days_of_as_of('created_at', 90) }} then 1 else 0 end) as support_tickets_90d,
        max(created_at) as last_ticket_at,
        min(created_at) as first_ticket_at
    from tickets
    group by person_id
),

-- Preferred category: where the person spent most (ties: more units, then the category name).
category_spend as (
    select
        person_id,
        category,
        sum(line_total) as spend,
        sum(quantity) as units
    from order_lines
    group by person_id, category
),

preferred_category as (
    select person_id, category
    from (
        select
            category_spend.*,
            row_number() over (partition by person_id order by spend desc, units desc, category) as category_rank
        from category_spend
    ) as ranked
    where category_rank = 1
),

-- Tenure: from the first thing we saw the person do (order, web session, email event, ticket).
activity_starts as (
    select person_id, first_order_at as started_at from rfm where first_order_at is not null
    union all
    select person_id, first_web_session_at from web_engagement
    union all
    select person_id, first_email_event_at from email_engagement
    union all
    select person_id, first_ticket_at from support
),

first_seen as (
    select person_id, min(started_at) as customer_since
    from activity_starts
    group by person_id
),

final as (
    select
        rfm.person_id,
        rfm.order_count,
        rfm.revenue,
        rfm.avg_order_value,
        rfm.first_order_at,
        rfm.last_order_at,
        rfm.recency_days,
        rfm.r_score,
        rfm.f_score,
        rfm.m_score,
        rfm.rfm_score,
        rfm.rfm_segment,
        rfm.lifecycle_stage,
        first_seen.customer_since,
        {{ days_before_as_of('first_seen.customer_since') }} as tenure_days,
        coalesce(web_engagement.web_sessions, 0) as web_sessions,
        coalesce(web_engagement.web_sessions_30d, 0) as web_sessions_30d,
        coalesce(web_engagement.web_sessions_90d, 0) as web_sessions_90d,
        web_engagement.last_web_session_at,
        coalesce(email_engagement.email_opens_30d, 0) as email_opens_30d,
        coalesce(email_engagement.email_opens_90d, 0) as email_opens_90d,
        coalesce(email_engagement.email_clicks_30d, 0) as email_clicks_30d,
        coalesce(email_engagement.email_clicks_90d, 0) as email_clicks_90d,
        coalesce(support.support_tickets, 0) as support_tickets,
        coalesce(support.support_tickets_90d, 0) as support_tickets_90d,
        coalesce(support.support_tickets_bad_satisfaction, 0) as support_tickets_bad_satisfaction,
        support.last_ticket_at,
        preferred_category.category as preferred_category,
        {{ as_of() }} as as_of
    from rfm
    left join web_engagement on web_engagement.person_id = rfm.person_id
    left join email_engagement on email_engagement.person_id = rfm.person_id
    left join support on support.person_id = rfm.person_id
    left join preferred_category on preferred_category.person_id = rfm.person_id
    left join first_seen on first_seen.person_id = rfm.person_id
)

select * from final
