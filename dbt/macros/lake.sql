{# The lake's Parquet files of a layer (`silver`, or `gold/<table>`), hive partitions as columns. #}
{% macro lake(layer) -%}
read_parquet('{{ var("lake_dir") }}/{{ layer }}/**/*.parquet', hive_partitioning = true, union_by_name = true)
{%- endmacro %}

{# Whether any file of a layer exists (so models over optional layers can be empty instead of failing). #}
{% macro lake_has(layer) -%}
{%- set pattern = var("lake_dir") ~ "/" ~ layer ~ "/**/*.parquet" -%}
{%- if execute -%}
{%- set r = run_query("select count(*) from glob('" ~ pattern ~ "')") -%}
{{ return(r.columns[0].values()[0] > 0) }}
{%- else -%}
{{ return(false) }}
{%- endif -%}
{%- endmacro %}
