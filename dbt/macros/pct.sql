{# num / den in percent with two decimals, null when den is 0 (as the Rust gold's `pct`). #}
{% macro pct(num, den) -%}
case when coalesce({{ den }}, 0) > 0 then round(10000.0 * {{ num }} / {{ den }}) / 100.0 end
{%- endmacro %}
