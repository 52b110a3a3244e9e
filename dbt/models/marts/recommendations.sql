{#- Top products per person: item-to-item co-occurrence (bought together in an order, viewed
    together in a session) from the person's most recent products, blended with their category
    affinity, and trending products as the fallback for people we know nothing about. Products
    the person bought in the last `recommendations_exclude_days` days are never recommended.

    Kept fast at scale by bounding every fan-out: `recommendations_neighbours` neighbours per
    product and kind, `recommendations_seed_items` seeds per person, 10 popular products per
    category for a person's top 3 categories, and 20 trending products. -#}

{%- set neighbours = var('recommendations_neighbours') -%}
{%- set seed_items = var('recommendations_seed_items') -%}

with customers as (
    select person_id from {{ ref('customers') }}
),

products as (
    select sku, category from {{ ref('stg_catalog__products') }}
),

order_lines as (
    select person_id, order_key, sku, ordered_at
    from {{ ref('int_order_lines') }}
    where person_id is not null and sku is not null
),

product_views as (
    select person_id, session_id, sku, occurred_at
    from {{ ref('int_web_product_events') }}
    where event_name = 'product_viewed'
        and {{ within_days_of_as_of('occurred_at', var('recommendations_view_days')) }}
),

-- Item to item ----------------------------------------------------------------------------
order_items as (
    select distinct order_key, sku from order_lines
),

item_orders as (
    select sku, count(*) as baskets from order_items group by sku
),

session_items as (
    select distinct session_id, sku from product_views
),

item_sessions as (
    select sku, count(*) as baskets from session_items group by sku
),

bought_pairs as (
    select a.sku, b.sku as neighbour_sku, count(*) as together
    from order_items as a
    inner join order_items as b on b.order_key = a.order_key and b.sku <> a.sku
    group by a.sku, b.sku
),

viewed_pairs as (
    select a.sku, b.sku as neighbour_sku, count(*) as together
    from session_items as a
    inner join session_items as b on b.session_id = a.session_id and b.sku <> a.sku
    group by a.sku, b.sku
),

-- Cosine similarity of the two products' baskets: co-occurrence discounted by popularity.
similarities as (
    select pairs.sku, pairs.neighbour_sku, 'bought_together' as reason,
        pairs.together / sqrt(cast(sku_counts.baskets * neighbour_counts.baskets as double)) as similarity
    from bought_pairs as pairs
    inner join item_orders as sku_counts on sku_counts.sku = pairs.sku
    inner join item_orders as neighbour_counts on neighbour_counts.sku = pairs.neighbour_sku
    union all
    select pairs.sku, pairs.neighbour_sku, 'viewed_together' as reason,
        pairs.together / sqrt(cast(sku_counts.baskets * neighbour_counts.baskets as double)) as similarity
    from viewed_pairs as pairs
    inner join item_sessions as sku_counts on sku_counts.sku = pairs.sku
    inner join item_sessions as neighbour_counts on neighbour_counts.sku = pairs.neighbour_sku
),

top_neighbours as (
    select sku, neighbour_sku, reason, similarity
    from (
        select similarities.*,
            row_number() over (partition by sku, reason order by similarity desc, neighbour_sku) as neighbour_rank
        from similarities
    ) as ranked
    where neighbour_rank <= {{ neighbours }}
),

-- What each person has shown interest in -----------------------------------------------------
person_items as (
    select person_id, sku, max(touched_at) as last_touched_at
    from (
        select person_id, sku, ordered_at as touched_at from order_lines
        union all
        select person_id, sku, occurred_at as touched_at from product_views
    ) as touches
    group by person_id, sku
),

seeds as (
    select person_id, sku
    from (
        select person_items.*,
            row_number() over (partition by person_id order by last_touched_at desc, sku) as seed_rank
        from person_items
    ) as ranked
    where seed_rank <= {{ seed_items }}
),

co_occurrence_candidates as (
    select seeds.person_id, top_neighbours.neighbour_sku as sku, top_neighbours.reason,
        sum(top_neighbours.similarity) * case when top_neighbours.reason = 'bought_together' then 1.0 else 0.6 end as score
    from seeds
    inner join top_neighbours on top_neighbours.sku = seeds.sku
    group by seeds.person_id, top_neighbours.neighbour_sku, top_neighbours.reason
),

-- Popularity: people who bought it (or, weighted less, viewed it) recently, plus a little for
-- all-time purchases so that a quiet catalog still has an order.
popularity as (
    select sku, sum(weight) as popularity
    from (
        select sku, case when {{ within_days_of_as_of('ordered_at', var('recommendations_trending_days')) }} then 1.0 else 0.01 end as weight
        from order_lines
        union all
        select sku, 0.2 as weight from product_views
        where {{ within_days_of_as_of('occurred_at', var('recommendations_trending_days')) }}
    ) as signals
    group by sku
),

catalog_popularity as (
    select products.sku, products.category, popularity.popularity,
        popularity.popularity / max(popularity.popularity) over () as global_score,
        popularity.popularity / max(popularity.popularity) over (partition by products.category) as category_score,
        row_number() over (order by popularity.popularity desc, products.sku) as global_rank,
        row_number() over (partition by products.category order by popularity.popularity desc, products.sku) as category_rank
    from products
    inner join popularity on popularity.sku = products.sku
),

-- Category affinity: the person's share of purchases and views in each category (top 3).
person_categories as (
    select person_items.person_id, products.category, count(*) as touches
    from person_items
    inner join products on products.sku = person_items.sku
    where products.category is not null
    group by person_items.person_id, products.category
),

top_person_categories as (
    select person_id, category, share
    from (
        select person_id, category,
            touches * 1.0 / sum(touches) over (partition by person_id) as share,
            row_number() over (partition by person_id order by touches desc, category) as category_order
        from person_categories
    ) as ranked
    where category_order <= 3
),

affinity_candidates as (
    select top_person_categories.person_id, catalog_popularity.sku, 'category_affinity' as reason,
        0.5 * top_person_categories.share * catalog_popularity.category_score as score
    from top_person_categories
    inner join catalog_popularity
        on catalog_popularity.category = top_person_categories.category
        and catalog_popularity.category_rank <= 10
),

-- Everyone gets the trending products as a (low-scored) fallback: a cold start gets only these.
trending_candidates as (
    select customers.person_id, catalog_popularity.sku, 'trending' as reason,
        0.01 * catalog_popularity.global_score as score
    from customers
    cross join catalog_popularity
    where catalog_popularity.global_rank <= 20
),

recently_bought as (
    select distinct person_id, sku
    from order_lines
    where {{ within_days_of_as_of('ordered_at', var('recommendations_exclude_days')) }}
),

candidates as (
    select * from co_occurrence_candidates
    union all
    select * from affinity_candidates
    union all
    select * from trending_candidates
),

eligible as (
    select candidates.*
    from candidates
    inner join customers on customers.person_id = candidates.person_id
    inner join products on products.sku = candidates.sku
    left join recently_bought
        on recently_bought.person_id = candidates.person_id and recently_bought.sku = candidates.sku
    where recently_bought.sku is null
),

-- One score per person and product: the sum of every signal. (Aggregates, not windows over
-- (person, product): millions of tiny partitions make windows slow.)
scored as (
    select person_id, sku, sum(score) as total_score, max(score) as top_signal
    from eligible
    group by person_id, sku
),

-- The reason is the strongest signal (ties: the first reason by name).
blended as (
    select scored.person_id, scored.sku, scored.total_score, min(eligible.reason) as reason
    from scored
    inner join eligible
        on eligible.person_id = scored.person_id
        and eligible.sku = scored.sku
        and eligible.score = scored.top_signal
    group by scored.person_id, scored.sku, scored.total_score
),

ranked as (
    select blended.*,
        row_number() over (partition by person_id order by total_score desc, sku) as product_rank
    from blended
),

final as (
    select
        person_id,
        cast(product_rank as {{ dbt.type_int() }}) as {{ adapter.quote('rank') }},
        sku,
        cast(round(total_score, 6) as double) as score,
        reason,
        {{ as_of() }} as as_of
    from ranked
    where product_rank <= 5
)

select * from final
