// Clickstream live dashboard: renders the snapshot the server pushes over SSE
// (`api/stream`, about once a second). No framework, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const TYPES = [
  ["page_view", "Page views", "--s1"],
  ["add_to_cart", "Cart additions", "--s2"],
  ["purchase", "Purchases", "--s3"],
];

function h(tag, attrs, ...kids) {
  const el = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    // Inline style attributes are blocked by the page's CSP; CSSOM assignments are not.
    if (k === "style") Object.assign(el.style, v);
    else if (k === "class") el.setAttribute("class", v);
    else el.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) el.append(k instanceof Node ? k : String(k));
  return el;
}

const nf = new Intl.NumberFormat("en-US");
const num = (n) => (n === null || n === undefined ? "–" : nf.format(n));
const money = (cents) => (cents === null || cents === undefined ? "–"
  : "$" + (cents / 100).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }));
const pct = (p) => (p === null || p === undefined ? "–" : p.toFixed(2) + "%");
const hhmm = (ms) => new Date(ms).toISOString().slice(11, 16);
const stamp = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19);
const ago = (s) => (s === null || s === undefined ? "never" : s < 90 ? s.toFixed(1) + " s ago"
  : s < 5400 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago");
const css = (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim();

function setText(id, text, value) {
  const el = $(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = value === null ? "" : String(value);
}

function empty(el, text) {
  el.replaceChildren(h("div", { class: "empty" }, text));
}

// A line chart of series [{label, color, points: [[x, y], ...]}] in clean SVG.
function lineChart(el, series, fmtY, emptyText) {
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) return empty(el, emptyText);
  // Drawn at the container's pixel size so labels stay 11px on any screen.
  const W = Math.max(260, Math.round(el.clientWidth || 640)), H = W < 500 ? 170 : 220;
  const L = 44, R = 10, T = 10, B = 24;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 60000);
  const yStep = niceCeil(Math.max(...ys, 0) / 4 || 0.25), y1 = 4 * yStep;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => T + (1 - y / y1) * (H - T - B);
  const svg = h("svg:svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
  for (let i = 0; i <= 4; i++) {
    const v = yStep * i;
    svg.append(h("svg:line", { class: "axis", x1: L, x2: W - R, y1: Y(v), y2: Y(v) }));
    svg.append(h("svg:text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end" }, fmtY(v)));
  }
  const ticks = Math.max(2, Math.floor(W / 90));
  const step = Math.max(1, Math.round((x1 - x0) / 60000 / ticks)) * 60000;
  for (let x = x0; x <= x1; x += step) {
    svg.append(h("svg:text", { x: X(x), y: H - 6, "text-anchor": "middle" }, hhmm(x)));
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => (i ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join(" ");
    const path = h("svg:path", { class: "series", d, stroke: s.color });
    path.append(h("svg:title", {}, s.label));
    svg.append(path);
    const last = s.points[s.points.length - 1];
    svg.append(h("svg:circle", { cx: X(last[0]), cy: Y(last[1]), r: 3, fill: s.color }));
  }
  const legend = h("div", { class: "legend" },
    ...series.map((s) => h("span", {}, h("i", { style: { background: s.color } }), s.label)));
  el.replaceChildren(svg, legend);
}

// The smallest 1, 2, 2.5 or 5 times a power of ten that is >= v.
function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

const fmtRate = (v) => (v >= 100 ? nf.format(Math.round(v)) : v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1));

let topBy = "views";
let last = null;
let updates = 0;

function render(s) {
  last = s;
  updates += 1;
  document.body.dataset.updates = String(updates);
  document.body.dataset.generatedAt = String(s.generated_at_ms || "");
  if (s.error) {
    status("bad", "database unreachable");
    banner("bad", [h("strong", {}, "Cannot read PostgreSQL. "), s.error]);
    return;
  }
  const o = s.overview, hl = s.health, noData = s.as_of_minute_ms === null;
  if (noData) {
    status("wait", "no data yet");
    banner("warn", [h("strong", {}, "No events processed yet. "),
      "Start the simulator and the processor (", h("code", {}, "./dev/demo.sh"),
      ", or ", h("code", {}, "clickstream generate"), " + ", h("code", {}, "clickstream process"),
      "); this page fills in by itself."]);
  } else if (!hl.processor_running) {
    status("warn", "processor not running");
    const seen = hl.instances.length ? " Last heartbeat " + ago(hl.instances[0].seen_seconds_ago) + "." : "";
    banner("warn", [h("strong", {}, "The stream processor is not running"),
      ` (group ${hl.group}): the numbers below are not moving.${seen} Start `,
      h("code", {}, "clickstream process"), "."]);
  } else if (hl.instances.some((i) => i.running && i.consecutive_failures > 0)) {
    const st = hl.instances.find((i) => i.running && i.consecutive_failures > 0);
    status("bad", "stalled");
    banner("bad", [h("strong", {}, "The stream processor is stalled"),
      ` (${st.instance_id}): ${st.consecutive_failures} failed attempts in a row since ${ago(st.stalled_seconds)}; it retries with backoff. Last error: `,
      h("code", {}, st.last_error || "unknown")]);
  } else {
    status("live", "live");
    banner(null);
  }
  setText("asof", noData ? "" : "data up to " + hhmm(s.as_of_minute_ms) + " UTC · updated " + stamp(s.generated_at_ms).slice(11) + " UTC");

  // KPIs
  const eps = hl.events_per_second;
  setText("kpi-eps", eps === null || eps === undefined ? "–" : fmtRate(eps), eps);
  const lastFull = s.throughput.length > 1 ? s.throughput[s.throughput.length - 2] : null;
  setText("kpi-eps-sub", lastFull ? "previous minute: " + TYPES.map(([t, l]) => l.split(" ")[0].toLowerCase() + " " + fmtRate(lastFull[t] / 60)).join(" · ") : "");
  setText("kpi-active", num(o.active_sessions), o.active_sessions);
  setText("kpi-active-sub", num(o.sessions) + " sessions started " + o.day);
  setText("kpi-day", o.day);
  setText("kpi-revenue", money(o.revenue_cents), o.revenue_cents);
  const units = o.by_type.find((t) => t.event_type === "purchase");
  setText("kpi-revenue-sub", units ? num(units.units) + " units sold" : "");
  setText("kpi-purchases", num(o.purchases), o.purchases);
  setText("kpi-purchases-sub", "order lines on " + o.day);
  setText("kpi-conversion", pct(o.conversion_pct), o.conversion_pct);
  setText("kpi-conversion-sub", num(o.converted_sessions) + " of " + num(o.sessions) + " sessions bought");
  setText("kpi-abandon", pct(o.cart_abandonment_pct), o.cart_abandonment_pct);
  setText("kpi-abandon-sub", num(o.abandoned_carts) + " of " + num(o.closed_cart_sessions) + " closed carts");

  drawCharts(s);
  renderFunnel(s.funnel);
  renderTop();
  renderAlerts(s.alerts);

  setText("c-bots", num(o.bot_events), o.bot_events);
  setText("c-late", num(o.late_events), o.late_events);
  setText("c-rejected", num(hl.dlq_records), hl.dlq_records);
  setText("c-dups", num(hl.duplicates), hl.duplicates);
  $("reasons").replaceChildren(...hl.dlq_top_reasons.map(([r, n]) => h("li", {}, `${r}: ${num(n)}`)));

  renderHealth(hl);
}

function drawCharts(s) {
  renderHourly(s.hourly);
  lineChart($("chart-throughput"),
    TYPES.map(([t, label, color]) => ({ label, color: css(color), points: s.throughput.map((p) => [p.minute_ms, p[t] / 60]) })),
    fmtRate, "No events in the last hour.");
  lineChart($("chart-conversion"),
    [{ label: "conversion %", color: css("--s3"), points: s.conversion.filter((p) => p.conversion_pct !== null).map((p) => [p.minute_ms, p.conversion_pct]) }],
    (v) => v.toFixed(0) + "%", "No sessions in the last hour.");
}

// Events per UTC hour of a day as bars, the peak hour highlighted.
function barChart(el, hours, peak, emptyText) {
  if (peak === null || peak === undefined) return empty(el, emptyText);
  const W = Math.max(260, Math.round(el.clientWidth || 640)), H = W < 500 ? 150 : 190;
  const L = 44, R = 10, T = 10, B = 24;
  const yStep = niceCeil(Math.max(...hours.map((p) => p.events), 1) / 4), y1 = 4 * yStep;
  const bw = (W - L - R) / hours.length;
  const Y = (y) => T + (1 - y / y1) * (H - T - B);
  const svg = h("svg:svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
  for (let i = 0; i <= 4; i++) {
    svg.append(h("svg:line", { class: "axis", x1: L, x2: W - R, y1: Y(yStep * i), y2: Y(yStep * i) }));
    svg.append(h("svg:text", { x: L - 6, y: Y(yStep * i) + 4, "text-anchor": "end" }, num(yStep * i)));
  }
  hours.forEach((p, i) => {
    const x = L + i * bw;
    const bar = h("svg:rect", { class: i === peak ? "bar-peak" : "bar-hour", x: x + bw * 0.12, y: Y(p.events),
      width: bw * 0.76, height: Math.max(0, Y(0) - Y(p.events)), "data-hour": i, "data-events": p.events });
    bar.append(h("svg:title", {}, `${hhmm(p.hour_ms)} UTC: ${num(p.events)} events, ${money(p.revenue_cents)}, ${num(p.sessions_started)} sessions started`));
    svg.append(bar);
    if (i % (W < 500 ? 6 : 3) === 0) svg.append(h("svg:text", { x: x + bw / 2, y: H - 6, "text-anchor": "middle" }, hhmm(p.hour_ms)));
  });
  el.replaceChildren(svg);
}

function renderHourly(hr) {
  setText("hourly-day", hr.day + " · events per UTC hour");
  const el = $("peak");
  if (hr.peak === null) {
    el.replaceChildren();
  } else {
    const p = hr.hours[hr.peak];
    el.replaceChildren("Peak hour ",
      h("strong", { "data-testid": "peak-hour" }, hhmm(p.hour_ms) + "–" + hhmm(p.hour_ms + 3600000) + " UTC"),
      " · ", h("span", { "data-testid": "peak-events" }, num(p.events)), " events · ",
      h("span", { "data-testid": "peak-revenue" }, money(p.revenue_cents)), " · ",
      num(p.sessions_started) + " sessions started");
  }
  barChart($("chart-hourly"), hr.hours, hr.peak, "No events on " + hr.day + ".");
}

function renderFunnel(f) {
  setText("funnel-day", f.day);
  const el = $("funnel");
  if (!f.product_views && !f.cart_adds && !f.purchases) return empty(el, "No product activity on " + f.day + ".");
  const max = Math.max(f.product_views, 1);
  const step = (label, n, id) => h("div", { class: "funnel-step" },
    h("div", { class: "row" }, h("span", {}, label), h("strong", { "data-testid": id }, num(n))),
    h("div", { class: "bar" }, h("span", { style: { width: Math.max(0.5, (100 * n) / max).toFixed(1) + "%" } })));
  el.replaceChildren(
    step("Product views", f.product_views, "funnel-views"),
    h("div", { class: "rate" }, "↓ " + pct(f.view_to_cart_pct) + " add to cart"),
    step("Cart additions", f.cart_adds, "funnel-carts"),
    h("div", { class: "rate" }, "↓ " + pct(f.cart_to_purchase_pct) + " purchased"),
    step("Purchases", f.purchases, "funnel-purchases"),
    h("div", { class: "rate" }, `Sessions: ${num(f.sessions_viewed)} viewed → ${num(f.sessions_carted)} carted → ${num(f.sessions_purchased)} bought · ${money(f.revenue_cents)}`));
}

function renderTop() {
  if (!last || last.error) return;
  const rows = topBy === "views" ? last.top_by_views : last.top_by_revenue;
  const body = $("top").tBodies[0];
  if (!rows.length) {
    body.replaceChildren(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No product activity in the last hour.")));
    return;
  }
  body.replaceChildren(...rows.map((p, i) => h("tr", { "data-product": p.product_id },
    h("td", {}, i + 1),
    h("td", {}, p.name, h("span", { class: "id" }, p.product_id)),
    h("td", {}, p.category),
    h("td", { class: "num" }, num(p.views)),
    h("td", { class: "num" }, num(p.cart_adds)),
    h("td", { class: "num" }, num(p.purchases)),
    h("td", { class: "num" }, money(p.revenue_cents)))));
}

function renderAlerts(a) {
  setText("alerts-total", a.total ? num(a.total) + " in all" : "");
  const el = $("alerts");
  if (!a.recent.length) {
    el.replaceChildren(h("li", { class: "empty" }, "No flash-sale alerts: no product has many views and few purchases in a 10-minute window."));
    return;
  }
  el.replaceChildren(...a.recent.map((x) => h("li", {},
    h("div", { class: "what" }, x.name, h("span", { class: "muted" }, " · " + x.category)),
    h("div", {}, `${num(x.views)} views, ${num(x.purchases)} purchases in ${hhmm(x.window_start_ms)}–${hhmm(x.window_end_ms)} UTC`),
    h("div", { class: "when" }, "raised " + stamp(x.raised_at_ms) + " UTC"))));
}

function renderHealth(hl) {
  const lagText = hl.kafka_error ? "lag unknown: " + hl.kafka_error
    : "total lag " + num(hl.total_lag) + " records";
  setText("health-sub", `group ${hl.group} · ${hl.topic} · ${lagText} · last commit ${ago(hl.last_commit_seconds_ago)}`);
  const maxLag = Math.max(1, ...hl.partitions.map((p) => p.lag || 0));
  const lag = $("lag").tBodies[0];
  if (!hl.partitions.length) lag.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No partitions known yet.")));
  else lag.replaceChildren(...hl.partitions.map((p) => h("tr", {},
    h("td", {}, p.partition),
    h("td", { class: "num" }, num(p.committed)),
    h("td", { class: "num" }, num(p.end)),
    h("td", { class: "num" }, num(p.lag), p.lag ? h("span", { class: "lagbar", style: { width: ((40 * p.lag) / maxLag).toFixed(0) + "px" } }) : null),
    h("td", {}, p.watermark_ms ? stamp(p.watermark_ms) : "–",
      p.idle_seconds != null ? h("span", { class: "muted", title: "no records: the watermark follows the clock" }, " idle") : null))));
  const inst = $("instances").tBodies[0];
  if (!hl.instances.length) inst.replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No processor has ever run for this group.")));
  else inst.replaceChildren(...hl.instances.slice(0, 8).map((i) => h("tr", {},
    h("td", {}, i.instance_id),
    i.running && i.consecutive_failures > 0
      ? h("td", { class: "state-bad", title: i.last_error || "" }, `stalled since ${ago(i.stalled_seconds)} (${i.consecutive_failures} failures)`)
      : h("td", { class: i.running ? "state-ok" : "state-bad" }, i.running ? "running" : (i.stopped ? "stopped " : "silent since ") + ago(i.seen_seconds_ago)),
    h("td", { class: "num" }, ago(i.commit_seconds_ago)),
    h("td", { class: "num" }, num(i.events)))));
}

function status(kind, text) {
  const el = $("status");
  el.className = "pill pill-" + kind;
  el.textContent = text;
}

function banner(kind, parts) {
  const el = $("banner");
  if (!kind) { el.hidden = true; return; }
  el.className = "banner" + (kind === "bad" ? " bad" : "");
  el.replaceChildren(...parts);
  el.hidden = false;
}

function selectTab(by) {
  topBy = by;
  $("tab-views").setAttribute("aria-selected", String(by === "views"));
  $("tab-revenue").setAttribute("aria-selected", String(by === "revenue"));
  renderTop();
}

async function start() {
  // A token given as ?token= is now in a cookie (set by the server): keep it out of the
  // address bar, history and screenshots.
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname);
  $("tab-views").addEventListener("click", () => selectTab("views"));
  $("tab-revenue").addEventListener("click", () => selectTab("revenue"));
  try {
    const r = await fetch("api/snapshot", { credentials: "same-origin" });
    if (r.status === 401) {
      status("bad", "token required");
      banner("bad", [h("strong", {}, "This dashboard needs a token. "), "Open it as ", h("code", {}, location.pathname + "?token=…"), "."]);
      return;
    }
    render(await r.json());
  } catch (e) {
    status("bad", "server unreachable");
  }
  const es = new EventSource("api/stream");
  es.addEventListener("snapshot", (ev) => render(JSON.parse(ev.data)));
  es.onerror = () => status("wait", "reconnecting…");
}

let resizeTimer = 0;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => last && !last.error && drawCharts(last), 150);
});

start();
