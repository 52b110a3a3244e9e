{#- Churn model features and labels: one row per person per snapshot, for the people who bought
    in the 365 days before the snapshot's cutoff. H = var('churn_horizon_days') (90).

      snapshot  cutoff      label (observed only when cutoff + H <= as_of)
      train     as_of - 2H  no purchase in (cutoff, cutoff + H]   -> fit
      validate  as_of - H   no purchase in (cutoff, cutoff + H]   -> time-split validation, then refit
      score     as_of       null                                  -> scored

    Every feature reads only events strictly before its cutoff, so a snapshot sees what a run
    at that cutoff would have seen. -#}

{%- set horizon = var('churn_horizon_days') | int -%}

with cutoffs as (
    {{ model_cutoffs([('train', 2), ('validate', 1), ('score', 0)], horizon) }}
),

-- Purchases only: a return is no sign of coming back. Returns net the revenue (returns below).
-- Money in integer cents, summed exactly (the same sums on every engine: money_cents).
orders as (
    select person_id, ordered_at, {{ money_cents('order_total') }} as order_cents, discount
    from {{ ref('int_orders') }}
    where person_id is not null and not coalesce(is_return, false)
),

returns as (
    select person_id, ordered_at, {{ money_cents('order_total') }} as order_cents
    from {{ ref('int_orders') }}
    where person_id is not null and coalesce(is_return, false)
),

return_features as (
    select
        cutoffs.snapshot,
        returns.person_id,
        sum(returns.order_cents) as returned_cents_365d
    from cutoffs
    inner join returns
        on {{ before_cutoff('returns.ordered_at', 'cutoffs.cutoff_at', 365) }}
    group by cutoffs.snapshot, returns.person_id
),

sessions as (
    select person_id, started_at, cart_adds, product_views
    from {{ ref('int_web_sessions') }}
    where person_id is not null
),

email as (
    select person_id, event_type, occurred_at
    from {{ ref('int_email_activity') }}
    where person_id is not null and event_type in ('sent', 'open', 'click')
),

tickets as (
    select person_id, created_at, is_bad_satisfaction
    from {{ ref('int_support_tickets') }}
    where person_id is not null
),

order_features as (
    select
        cutoffs.snapshot,
        orders.person_id,
        count(*) as orders_total,
        {{ count_before_cutoff('orders.ordered_at', 'cutoffs.cutoff_at', 30) }} as orders_30d,
        {{ count_before_cutoff('orders.ordered_at', 'cutoffs.cutoff_at', 90) }} as orders_90d,
        {{ count_before_cutoff('orders.ordered_at', 'cutoffs.cutoff_at', 180, 90) }} as orders_prev_90d,
        {{ count_before_cutoff('orders.ordered_at', 'cutoffs.cutoff_at', 365) }} as orders_365d,
        sum(case when {{ before_cutoff('orders.ordered_at', 'cutoffs.cutoff_at', 365) }} then orders.order_cents else 0 end) as revenue_cents_365d,
        {{ count_before_cutoff('orders.ordered_at', 'cutoffs.cutoff_at', 365, 0, 'orders.discount > 0') }} as discounted_orders_365d,
        min({{ days_between('orders.ordered_at', 'cutoffs.cutoff_at') }}) as days_since_last_order,
        max({{ days_between('orders.ordered_at', 'cutoffs.cutoff_at') }}) as days_since_first_order
    from cutoffs
    inner join orders on orders.ordered_at < cutoffs.cutoff_at
    group by cutoffs.snapshot, orders.person_id
),

session_features as (
    select
        cutoffs.snapshot,
        sessions.person_id,
        {{ count_before_cutoff('sessions.started_at', 'cutoffs.cutoff_at', 30) }} as web_sessions_30d,
        {{ count_before_cutoff('sessions.started_at', 'cutoffs.cutoff_at', 90) }} as web_sessions_90d,
        {{ count_before_cutoff('sessions.started_at', 'cutoffs.cutoff_at', 180, 90) }} as web_sessions_prev_90d,
        count(*) as web_sessions_365d,
        sum(case when {{ before_cutoff('sessions.started_at', 'cutoffs.cutoff_at', 90) }} then sessions.cart_adds else 0 end) as cart_adds_90d,
        min({{ days_between('sessions.started_at', 'cutoffs.cutoff_at') }}) as days_since_last_session
    from cutoffs
    inner join sessions
        on sessions.started_at < cutoffs.cutoff_at
        and sessions.started_at >= {{ dbt.dateadd('day', -365, 'cutoffs.cutoff_at') }}
    group by cutoffs.snapshot, sessions.person_id
),

email_features as (
    select
        cutoffs.snapshot,
        email.person_id,
        {{ count_before_cutoff('email.occurred_at', 'cutoffs.cutoff_at', 90, 0, "email.event_type = 'sent'") }} as emails_sent_90d,
        {{ count_before_cutoff('email.occurred_at', 'cutoffs.cutoff_at', 30, 0, "email.event_type = 'open'") }} as email_opens_30d,
        {{ count_before_cutoff('email.occurred_at', 'cutoffs.cutoff_at', 90, 0, "email.event_type = 'open'") }} as email_opens_90d,
        {{ count_before_cutoff('email.occurred_at', 'cutoffs.cutoff_at', 180, 90, "email.event_type = 'open'") }} as email_opens_prev_90d,
        {{ count_before_cutoff('email.occurred_at', 'cutoffs.cutoff_at', 90, 0, "email.event_type = 'click'") }} as email_clicks_90d,
        {{ count_before_cutoff('email.occurred_at', 'cutoffs.cutoff_at', 365, 0, "email.event_type = 'sent'") }} as emails_sent_365d,
        {{ count_before_cutoff('email.occurred_at', 'cutoffs.cutoff_at', 365, 0, "email.event_type = 'open'") }} as email_opens_365d,
        min(case when email.event_type = 'open' then {{ days_between('email.occurred_at', 'cutoffs.cutoff_at') }} end) as days_since_last_open
    from cutoffs
    inner join email
        on email.occurred_at < cutoffs.cutoff_at
        and email.occurred_at >= {{ dbt.dateadd('day', -365, 'cutoffs.cutoff_at') }}
    group by cutoffs.snapshot, email.person_id
),

ticket_features as (
    select
        cutoffs.snapshot,
        tickets.person_id,
        {{ count_before_cutoff('tickets.created_at', 'cutoffs.cutoff_at', 365) }} as support_tickets_365d,
        {{ count_before_cutoff('tickets.created_at', 'cutoffs.cutoff_at', 365, 0, 'tickets.is_bad_satisfaction') }} as bad_tickets_365d,
        {{ count_before_cutoff('tickets.created_at', 'cutoffs.cutoff_at', 90, 0, 'tickets.is_bad_satisfaction') }} as bad_tickets_90d
    from cutoffs
    inner join tickets
        on tickets.created_at < cutoffs.cutoff_at
        and tickets.created_at >= {{ dbt.dateadd('day', -365, 'cutoffs.cutoff_at') }}
    group by cutoffs.snapshot, tickets.person_id
),

labels as (
    select
        cutoffs.snapshot,
        orders.person_id,
        count(*) as orders_in_horizon
    from cutoffs
    inner join orders
        on orders.ordered_at > cutoffs.cutoff_at
        and orders.ordered_at <= {{ dbt.dateadd('day', horizon, 'cutoffs.cutoff_at') }}
    group by cutoffs.snapshot, orders.person_id
),

final as (
    select
        order_features.snapshot,
        order_features.person_id,
        cutoffs.cutoff_at,
        order_features.days_since_last_order,
        order_features.days_since_first_order,
        order_features.orders_total,
        order_features.orders_30d,
        order_features.orders_90d,
        order_features.orders_prev_90d,
        order_features.orders_365d,
        {{ cents_to_money('order_features.revenue_cents_365d + coalesce(return_features.returned_cents_365d, 0)') }} as revenue_365d,
        {{ cents_average('order_features.revenue_cents_365d + coalesce(return_features.returned_cents_365d, 0)', 'order_features.orders_365d') }} as avg_order_value_365d,
        {{ feature_ratio('order_features.discounted_orders_365d', 'order_features.orders_365d') }} as discounted_order_share_365d,
        order_features.orders_90d - order_features.orders_prev_90d as orders_trend_90d,
        coalesce(session_features.web_sessions_30d, 0) as web_sessions_30d,
        coalesce(session_features.web_sessions_90d, 0) as web_sessions_90d,
        coalesce(session_features.web_sessions_90d, 0) - coalesce(session_features.web_sessions_prev_90d, 0) as web_sessions_trend_90d,
        cast(coalesce(session_features.cart_adds_90d, 0) as bigint) as cart_adds_90d,
        coalesce(session_features.days_since_last_session, 365) as days_since_last_session,
        coalesce(email_features.emails_sent_90d, 0) as emails_sent_90d,
        coalesce(email_features.email_opens_30d, 0) as email_opens_30d,
        coalesce(email_features.email_opens_90d, 0) as email_opens_90d,
        coalesce(email_features.email_opens_90d, 0) - coalesce(email_features.email_opens_prev_90d, 0) as email_opens_trend_90d,
        coalesce(email_features.email_clicks_90d, 0) as email_clicks_90d,
        coalesce(email_features.emails_sent_365d, 0) as emails_sent_365d,
        coalesce(email_features.email_opens_365d, 0) as email_opens_365d,
        coalesce(email_features.days_since_last_open, 365) as days_since_last_open,
        coalesce(session_features.web_sessions_365d, 0) as web_sessions_365d,
        -- The long-run pace against the recent one: orders per 90 days over the whole tenure.
        cast(order_features.orders_total as double) * 90.0 / (case when order_features.days_since_first_order > 90 then order_features.days_since_first_order else 90 end) as orders_per_90d_lifetime,
        coalesce(ticket_features.support_tickets_365d, 0) as support_tickets_365d,
        coalesce(ticket_features.bad_tickets_365d, 0) as bad_tickets_365d,
        coalesce(ticket_features.bad_tickets_90d, 0) as bad_tickets_90d,
        case
            when {{ dbt.dateadd('day', horizon, 'cutoffs.cutoff_at') }} > {{ as_of() }} then null
            when labels.orders_in_horizon is null then 1
            else 0
        end as churned
    from order_features
    inner join cutoffs on cutoffs.snapshot = order_features.snapshot
    left join session_features
        on session_features.snapshot = order_features.snapshot and session_features.person_id = order_features.person_id
    left join email_features
        on email_features.snapshot = order_features.snapshot and email_features.person_id = order_features.person_id
    left join ticket_features
        on ticket_features.snapshot = order_features.snapshot and ticket_features.person_id = order_features.person_id
    left join return_features
        on return_features.snapshot = order_features.snapshot and return_features.person_id = order_features.person_id
    left join labels
        on labels.snapshot = order_features.snapshot and labels.person_id = order_features.person_id
    where order_features.orders_365d > 0
)

select * from final
