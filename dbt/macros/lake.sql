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

{# The column names of a layer's files (all files, by name), at compile time. #}
{% macro lake_columns(layer) -%}
{%- if execute -%}
{%- set r = run_query("describe select * from " ~ lake(layer)) -%}
{{ return(r.columns[0].values() | list) }}
{%- else -%}
{{ return([]) }}
{%- endif -%}
{%- endmacro %}

{# `name` if the layer's files have it (written since the collector existed), else a typed null. #}
{% macro optional_column(columns, name, type) -%}
{%- if name in columns -%}{{ name }}{%- else -%}null::{{ type }} as {{ name }}{%- endif -%}
{%- endmacro %}
