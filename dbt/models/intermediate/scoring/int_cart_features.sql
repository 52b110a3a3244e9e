{#- Cart-intent model features and labels: one row per open cart per snapshot. A cart is open
    at a cutoff when its last item was added in the var('cart_lookback_days') (30) days before
    the cutoff and it was not ordered before the cutoff.

      snapshot  cutoffs                                         label
      history   as_of - 7k days, k = 1..var('cart_history_weeks')  ordered in [cutoff, cutoff + var('cart_intent_days'))
      score     as_of                                           null

    Features read only what happened before the cutoff: the cart (value, items, age, checkout
    started), the person's purchase history, visits, email engagement and how their earlier
    abandoned carts went. Carts nobody can be attached to are left out (nobody to act on). -#}

{%- set intent_days = var('cart_intent_days') | int -%}
{%- set lookback_days = var('cart_lookback_days') | int -%}
{%- set weeks = var('cart_history_weeks') | int -%}

with cutoffs as (
    {%- set offsets = [('score', 0)] -%}
    {%- for k in range(1, weeks + 1) %}{% do offsets.append(('history', k)) %}{% endfor %}
    {{ model_cutoffs(offsets, 7) }}
),

carts as (
    select * from {{ ref('int_carts') }}
    where person_id is not null
),

orders as (
    select person_id, ordered_at, discount
    from {{ ref('int_orders') }}
    where person_id is not null
),

sessions as (
    select person_id, started_at
    from {{ ref('int_web_sessions') }}
    where person_id is not null
),

email as (
    select person_id, occurred_at
    from {{ ref('int_email_activity') }}
    where person_id is not null and event_type = 'open'
),

open_carts as (
    select
        cutoffs.snapshot,
        cutoffs.cutoff_at,
        carts.cart_id,
        carts.person_id,
        carts.first_added_at,
        carts.last_added_at,
        carts.items_added,
        carts.cart_value,
        case when carts.checkout_started_at < cutoffs.cutoff_at then 1 else 0 end as checkout_started,
        carts.ordered_at
    from cutoffs
    inner join carts
        on carts.last_added_at < cutoffs.cutoff_at
        and carts.last_added_at >= {{ dbt.dateadd('day', -1 * lookback_days, 'cutoffs.cutoff_at') }}
        and (carts.ordered_at is null or carts.ordered_at >= cutoffs.cutoff_at)
),

order_features as (
    select
        open_carts.cutoff_at,
        open_carts.cart_id,
        count(*) as orders_total,
        {{ count_before_cutoff('orders.ordered_at', 'open_carts.cutoff_at', 365) }} as orders_365d,
        sum(case when orders.discount > 0 then 1 else 0 end) as discounted_orders,
        min({{ days_between('orders.ordered_at', 'open_carts.cutoff_at') }}) as days_since_last_order
    from open_carts
    inner join orders
        on orders.person_id = open_carts.person_id
        and orders.ordered_at < open_carts.cutoff_at
    group by open_carts.cutoff_at, open_carts.cart_id
),

session_features as (
    select
        open_carts.cutoff_at,
        open_carts.cart_id,
        {{ count_before_cutoff('sessions.started_at', 'open_carts.cutoff_at', 30) }} as web_sessions_30d,
        -- The latest visit before this cart's visit (the cart's own session excluded).
        min(case
            when sessions.started_at < {{ dbt.dateadd('minute', -1 * var('session_timeout_minutes'), 'open_carts.first_added_at') }}
            then {{ days_between('sessions.started_at', 'open_carts.first_added_at') }}
        end) as days_since_previous_visit
    from open_carts
    inner join sessions
        on sessions.person_id = open_carts.person_id
        and sessions.started_at < open_carts.cutoff_at
        and sessions.started_at >= {{ dbt.dateadd('day', -365, 'open_carts.cutoff_at') }}
    group by open_carts.cutoff_at, open_carts.cart_id
),

email_features as (
    select
        open_carts.cutoff_at,
        open_carts.cart_id,
        count(*) as email_opens_90d
    from open_carts
    inner join email
        on email.person_id = open_carts.person_id
        and {{ before_cutoff('email.occurred_at', 'open_carts.cutoff_at', 90) }}
    group by open_carts.cutoff_at, open_carts.cart_id
),

-- How the person's earlier abandoned carts went: those whose outcome was known at the cutoff.
past_cart_features as (
    select
        open_carts.cutoff_at,
        open_carts.cart_id,
        count(*) as past_abandoned_carts,
        sum(case
            when earlier.ordered_at < {{ dbt.dateadd('day', intent_days, 'earlier.last_added_at') }} then 1 else 0
        end) as past_carts_returned
    from open_carts
    inner join carts as earlier
        on earlier.person_id = open_carts.person_id
        and earlier.cart_id <> open_carts.cart_id
        and earlier.last_added_at < {{ dbt.dateadd('day', -1 * intent_days, 'open_carts.cutoff_at') }}
        -- abandoned: not ordered in the session it was filled in
        and (earlier.ordered_at is null or earlier.return_gap_hours is not null)
    group by open_carts.cutoff_at, open_carts.cart_id
),

final as (
    select
        open_carts.snapshot,
        open_carts.cutoff_at,
        open_carts.cart_id,
        open_carts.person_id,
        open_carts.last_added_at,
        open_carts.cart_value,
        cast(open_carts.items_added as bigint) as items_added,
        {{ days_between('open_carts.last_added_at', 'open_carts.cutoff_at') }} * 24 as hours_since_added,
        open_carts.checkout_started,
        coalesce(order_features.orders_total, 0) as orders_total,
        coalesce(order_features.orders_365d, 0) as orders_365d,
        coalesce({{ feature_ratio('order_features.discounted_orders', 'order_features.orders_total') }}, 0) as discounted_order_share,
        coalesce(order_features.days_since_last_order, 730) as days_since_last_order,
        coalesce(session_features.web_sessions_30d, 0) as web_sessions_30d,
        coalesce(session_features.days_since_previous_visit, 90) as days_since_previous_visit,
        coalesce(email_features.email_opens_90d, 0) as email_opens_90d,
        coalesce(past_cart_features.past_abandoned_carts, 0) as past_abandoned_carts,
        cast(coalesce(past_cart_features.past_carts_returned, 0) as bigint) as past_carts_returned,
        case
            when open_carts.snapshot = 'score' then null
            when open_carts.ordered_at < {{ dbt.dateadd('day', intent_days, 'open_carts.cutoff_at') }} then 1
            else 0
        end as purchased_within_window
    from open_carts
    left join order_features
        on order_features.cutoff_at = open_carts.cutoff_at and order_features.cart_id = open_carts.cart_id
    left join session_features
        on session_features.cutoff_at = open_carts.cutoff_at and session_features.cart_id = open_carts.cart_id
    left join email_features
        on email_features.cutoff_at = open_carts.cutoff_at and email_features.cart_id = open_carts.cart_id
    left join past_cart_features
        on past_cart_features.cutoff_at = open_carts.cutoff_at and past_cart_features.cart_id = open_carts.cart_id
)

select * from final
