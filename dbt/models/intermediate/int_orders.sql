{#- Every order once: web orders (order_completed) plus POS receipts, where a POS receipt with
    channel=web whose order_ref matches a web order is that same order (fulfilled through the
    store system) and is not counted again. Each order is attached to a person through the
    identity graph. -#}

with web_orders as (
    select * from {{ ref('int_web_order_events') }}
),

pos_transactions as (
    select * from {{ ref('stg_pos__transactions') }}
),

graph as (
    select * from {{ ref('stg_identity__graph') }}
),

-- The POS copy of a web order (channel=web, order_ref = web order id). One receipt per order at most.
pos_copies_of_web_orders as (
    select *
    from (
        select
            pos_transactions.transaction_id,
            pos_transactions.source as pos_source,
            pos_transactions.loyalty_id,
            web_orders.source as web_source,
            web_orders.order_id,
            row_number() over (
                partition by web_orders.source, web_orders.order_id
                order by pos_transactions.occurred_at, pos_transactions.transaction_id
            ) as copy_rank
        from pos_transactions
        inner join web_orders
            on pos_transactions.channel = 'web'
            and pos_transactions.order_ref = web_orders.order_id
    ) as ranked
    where copy_rank = 1
),

pos_people as (
    select
        pos_transactions.source,
        pos_transactions.transaction_id,
        coalesce(member_record.person_id, receipt_record.person_id) as person_id,
        case
            when member_record.person_id is not null then 'loyalty_member'
            when receipt_record.person_id is not null then 'receipt'
        end as identified_via
    from pos_transactions
    left join graph as member_record
        on member_record.entity = 'loyalty_members'
        and member_record.source = pos_transactions.source
        and member_record.source_record_id = pos_transactions.loyalty_id
    left join graph as receipt_record
        on receipt_record.entity = 'transactions'
        and receipt_record.source = pos_transactions.source
        and receipt_record.source_record_id = pos_transactions.transaction_id
),

web_people as (
    select
        web_orders.source,
        web_orders.order_id,
        {{ web_person_id() }} as person_id,
        case
            when user_record.person_id is not null then 'web_user_id'
            when anonymous_record.person_id is not null then 'web_anonymous_id'
        end as identified_via
    from web_orders
    {{ join_web_person('web_orders') }}
),

web_final as (
    select
        web_orders.source || ':' || web_orders.order_id as order_key,
        web_orders.order_id,
        'web' as order_source,
        web_orders.source,
        'web' as channel,
        web_orders.occurred_at as ordered_at,
        web_orders.order_revenue as order_total,
        coalesce(web_orders.order_discount, 0) as discount,
        pos_copy.transaction_id as pos_transaction_id,
        -- The web identity first; else the store copy's (e.g. a loyalty card given at collection).
        coalesce(web_people.person_id, pos_copy_people.person_id) as person_id,
        coalesce(web_people.identified_via, pos_copy_people.identified_via) as identified_via,
        false as is_return
    from web_orders
    left join web_people
        on web_people.source = web_orders.source and web_people.order_id = web_orders.order_id
    left join pos_copies_of_web_orders as pos_copy
        on pos_copy.web_source = web_orders.source and pos_copy.order_id = web_orders.order_id
    left join pos_people as pos_copy_people
        on pos_copy_people.source = pos_copy.pos_source and pos_copy_people.transaction_id = pos_copy.transaction_id
),

pos_final as (
    select
        pos_transactions.source || ':' || pos_transactions.transaction_id as order_key,
        pos_transactions.transaction_id as order_id,
        'pos' as order_source,
        pos_transactions.source,
        pos_transactions.channel,
        pos_transactions.occurred_at as ordered_at,
        pos_transactions.total as order_total,
        pos_transactions.discount,
        pos_transactions.transaction_id as pos_transaction_id,
        pos_people.person_id,
        pos_people.identified_via,
        pos_transactions.is_return
    from pos_transactions
    left join pos_people
        on pos_people.source = pos_transactions.source and pos_people.transaction_id = pos_transactions.transaction_id
    where not exists (
        select 1
        from pos_copies_of_web_orders as pos_copy
        where pos_copy.pos_source = pos_transactions.source
            and pos_copy.transaction_id = pos_transactions.transaction_id
    )
),

final as (
    select * from web_final
    union all
    select * from pos_final
)

select * from final
