{#- Each person's history at the scoring cutoff (as_of), for `cdp serve` to score a cart the
    batch did not see (serve/cart_model.py): one row per person with an order, a web session,
    an email open or a cart before the cutoff. The same windows and macros as int_cart_features'
    history features (count_before_cutoff, before_cutoff, days_between), so the two definitions
    cannot drift (a test compares them on every score cart): counts at the cutoff, and the
    times the live side recomputes the cart-relative features from (days since the last order,
    days from the previous visit to the live cart's first add). Person-level: a cart's own
    exclusion (int_cart_features' `earlier.cart_id <> open cart`) does not apply to a cart the
    batch never saw. -#}

{%- set intent_days = var('cart_intent_days') | int -%}

with cutoffs as (
    {{ model_cutoffs([('score', 0)], 7) }}
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

carts as (
    select * from {{ ref('int_carts') }}
    where person_id is not null
),

order_history as (
    select
        orders.person_id,
        count(*) as orders_total,
        {{ count_before_cutoff('orders.ordered_at', 'cutoffs.cutoff_at', 365) }} as orders_365d,
        sum(case when orders.discount > 0 then 1 else 0 end) as discounted_orders,
        max(orders.ordered_at) as last_ordered_at
    from orders
    inner join cutoffs on orders.ordered_at < cutoffs.cutoff_at
    group by orders.person_id
),

-- int_cart_features' session window: the year before the cutoff
recent_sessions as (
    select
        sessions.person_id,
        sessions.started_at,
        cutoffs.cutoff_at,
        row_number() over (partition by sessions.person_id order by sessions.started_at desc) as recency
    from sessions
    inner join cutoffs
        on sessions.started_at < cutoffs.cutoff_at
        and sessions.started_at >= {{ dbt.dateadd('day', -365, 'cutoffs.cutoff_at') }}
),

session_history as (
    select
        person_id,
        {{ count_before_cutoff('started_at', 'cutoff_at', 30) }} as web_sessions_30d,
        -- the two latest visits: a cart first added at or after the cutoff has its previous
        -- visit among them (visits start at least a session timeout apart)
        max(case when recency = 1 then started_at end) as last_session_at,
        max(case when recency = 2 then started_at end) as previous_session_at
    from recent_sessions
    group by person_id
),

email_history as (
    select email.person_id, count(*) as email_opens_90d
    from email
    inner join cutoffs on {{ before_cutoff('email.occurred_at', 'cutoffs.cutoff_at', 90) }}
    group by email.person_id
),

-- int_cart_features' past_cart_features at the cutoff, for a cart the batch did not see
past_cart_history as (
    select
        earlier.person_id,
        sum(case
            when earlier.last_added_at < {{ dbt.dateadd('day', -1 * intent_days, 'cutoffs.cutoff_at') }}
                and (earlier.ordered_at is null or earlier.return_gap_hours is not null)
            then 1 else 0
        end) as past_abandoned_carts,
        sum(case
            when earlier.last_added_at < {{ dbt.dateadd('day', -1 * intent_days, 'cutoffs.cutoff_at') }}
                and (earlier.ordered_at is null or earlier.return_gap_hours is not null)
                and earlier.ordered_at < {{ dbt.dateadd('day', intent_days, 'earlier.last_added_at') }}
            then 1 else 0
        end) as past_carts_returned
    from carts as earlier
    inner join cutoffs on earlier.last_added_at < cutoffs.cutoff_at
    group by earlier.person_id
),

persons as (
    select person_id from order_history
    union
    select person_id from session_history
    union
    select person_id from email_history
    union
    select person_id from past_cart_history
),

final as (
    select
        persons.person_id,
        cutoffs.cutoff_at,
        coalesce(order_history.orders_total, 0) as orders_total,
        coalesce(order_history.orders_365d, 0) as orders_365d,
        coalesce(order_history.discounted_orders, 0) as discounted_orders,
        order_history.last_ordered_at,
        coalesce(session_history.web_sessions_30d, 0) as web_sessions_30d,
        session_history.last_session_at,
        session_history.previous_session_at,
        coalesce(email_history.email_opens_90d, 0) as email_opens_90d,
        coalesce(past_cart_history.past_abandoned_carts, 0) as past_abandoned_carts,
        coalesce(past_cart_history.past_carts_returned, 0) as past_carts_returned
    from persons
    cross join cutoffs
    left join order_history on order_history.person_id = persons.person_id
    left join session_history on session_history.person_id = persons.person_id
    left join email_history on email_history.person_id = persons.person_id
    left join past_cart_history on past_cart_history.person_id = persons.person_id
)

select * from final
