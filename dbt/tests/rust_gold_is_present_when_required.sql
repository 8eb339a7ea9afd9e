-- With `--vars '{require_gold: true}'` (as CI runs it) the agreement tests must have Rust
-- gold to compare with: an empty gold directory would make them pass vacuously.
{% if var('require_gold', false) and not lake_has('gold/daily_funnel') %}
select 'no Rust gold under {{ var("lake_dir") }}/gold' as problem
{% else %}
select 1 as ok where false
{% endif %}
