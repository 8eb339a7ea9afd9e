/*! clickstream tracker: page views, cart additions and purchases to a clickstream collector.
 *
 * <script src="https://collector.example/tracker.js" data-key="WRITE_KEY" async></script>
 *
 * Options (attributes of the script tag):
 *   data-key             the site's write key (required)
 *   data-endpoint        collector base URL (default: where this script came from)
 *   data-page            page kind of the automatic page view (default "page")
 *   data-auto-page-view  "false" to send page views yourself with clickstream.page({...})
 *
 * API: clickstream.page(props), clickstream.track(type, props), clickstream.flush().
 * Events wait in localStorage until the collector acknowledges them, so a failed send, an
 * offline spell or a closed tab loses nothing; a re-send keeps its event_id and timestamp,
 * which the pipeline deduplicates on.
 */
(function (w, d) {
  "use strict";
  if (w.clickstream && w.clickstream.version) return;
  var script = d.currentScript || d.querySelector("script[data-key]");
  var cfg = script ? script.dataset : {};
  var endpoint = (cfg.endpoint || (script ? new URL(script.src, location.href).origin : "")).replace(/\/$/, "");
  var QUEUE = "cs_queue", UID = "cs_uid", SID = "cs_sid";
  var SESSION_MS = 30 * 60 * 1000, BATCH = 50, MAX_QUEUE = 1000, LEASE_MS = 10000;
  var sending = false, backoff = 0, timer = null;

  function store(k, v) {
    try {
      if (v === undefined) return w.localStorage.getItem(k);
      w.localStorage.setItem(k, v);
    } catch (e) { /* storage disabled or full: keep going in memory */ }
    return null;
  }
  var memory = [];
  function load() {
    try { var q = JSON.parse(store(QUEUE) || "[]"); return Array.isArray(q) ? q : memory; } catch (e) { return memory; }
  }
  function save(q) { memory = q.slice(-MAX_QUEUE); store(QUEUE, JSON.stringify(memory)); }

  function uuid() {
    if (w.crypto && w.crypto.randomUUID) return w.crypto.randomUUID();
    var b = new Uint8Array(16);
    w.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function cookie(name, value, maxAge) {
    if (value === undefined) {
      var m = d.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
      return m ? decodeURIComponent(m[1]) : null;
    }
    d.cookie = name + "=" + encodeURIComponent(value) + "; Max-Age=" + maxAge + "; Path=/; SameSite=Lax";
  }

  // Anonymous visitor id: first-party cookie and localStorage, either restores the other.
  function userId() {
    var id = store(UID) || cookie("_cs_uid");
    if (!id) id = uuid();
    store(UID, id);
    cookie("_cs_uid", id, 63072000);
    return id;
  }

  // A session ends after 30 minutes without events.
  function session(now) {
    var s = null;
    try { s = JSON.parse(store(SID) || "null"); } catch (e) { s = null; }
    var fresh = !s || !s.id || now - s.last > SESSION_MS;
    if (fresh) s = { id: uuid(), last: now };
    s.last = now;
    store(SID, JSON.stringify(s));
    return { id: s.id, fresh: fresh };
  }

  function clip(v, n) { return typeof v === "string" ? v.slice(0, n) : v; }

  function track(type, props) {
    var now = Date.now();
    var s = session(now);
    var e = { schema_version: 1, event_id: uuid(), event_type: type, timestamp: new Date(now).toISOString(),
      user_id: userId(), session_id: s.id };
    for (var k in props || {}) if (props[k] !== undefined && props[k] !== null) e[k] = clip(props[k], 512);
    if (s.fresh) {
      if (d.referrer && !e.referrer) e.referrer = clip(d.referrer, 512);
      var utm = new URLSearchParams(location.search).get("utm_source");
      if (utm && !e.utm_source) e.utm_source = clip(utm, 64);
    }
    var q = load();
    q.push(e);
    save(q);
    schedule(q.length >= BATCH ? 0 : 1000);
    return e.event_id;
  }

  function schedule(ms) {
    if (timer) clearTimeout(timer);
    timer = setTimeout(function () { timer = null; flush(); }, Math.max(ms, backoff));
  }

  function url() { return endpoint + "/v1/events?k=" + encodeURIComponent(cfg.key || ""); }

  // Sends up to BATCH queued events; they leave the queue only once the collector answered
  // for them (2xx, or 4xx for events it will never take). Network errors, 429 and 5xx keep
  // them and retry with backoff. Events being sent are leased for LEASE_MS so a second
  // flush (pagehide and visibilitychange both fire, or the next page loads while a
  // keepalive request is still out) does not send them again at once; a page that unloads
  // never hears the answer, so its leased events go out once more when the lease ends, and
  // the pipeline drops the copy.
  function flush(unloading) {
    var now = Date.now();
    var q = load();
    var batch = q.filter(function (e) { return !(e._lease > now); }).slice(0, BATCH);
    if (!batch.length || (sending && !unloading)) {
      var leased = q.filter(function (e) { return e._lease > now; });
      if (leased.length && !timer) schedule(Math.min.apply(null, leased.map(function (e) { return e._lease; })) - now + 50);
      return Promise.resolve();
    }
    var ids = {};
    batch.forEach(function (e) { ids[e.event_id] = 1; });
    save(q.map(function (e) { if (ids[e.event_id]) e._lease = now + LEASE_MS; return e; }));
    var sentAt = new Date(now).toISOString();
    var body = JSON.stringify(batch.map(function (e) {
      var c = {}; for (var k in e) if (k !== "_lease") c[k] = e[k]; c.sent_at = sentAt; return c;
    }));
    function done() {
      save(load().filter(function (e) { return !ids[e.event_id]; }));
    }
    function release() {
      save(load().map(function (e) { if (ids[e.event_id]) delete e._lease; return e; }));
    }
    if (unloading && !w.fetch && navigator.sendBeacon) {
      navigator.sendBeacon(url(), new Blob([body], { type: "text/plain" }));
      return Promise.resolve();
    }
    sending = true;
    // text/plain keeps this a "simple" CORS request (no preflight); keepalive lets it finish
    // after the page is gone.
    return w.fetch(url(), { method: "POST", body: body, keepalive: body.length < 60000,
      headers: { "Content-Type": "text/plain;charset=UTF-8" }, credentials: "omit" })
      .then(function (r) {
        sending = false;
        if (r.ok || (r.status >= 400 && r.status < 500 && r.status !== 429 && r.status !== 408 && r.status !== 401)) {
          if (!r.ok && w.console) console.warn("clickstream: collector refused events", r.status);
          done();
          backoff = 0;
          if (load().length) schedule(0);
          return;
        }
        release();
        var after = parseInt(r.headers.get("Retry-After") || "0", 10) * 1000;
        retry(after);
      }, function () { sending = false; release(); retry(0); });
  }

  function retry(after) {
    backoff = Math.min(Math.max(backoff * 2, 1000, after), 60000);
    schedule(backoff);
  }

  function page(props) {
    var p = props || {};
    if (!p.page) p.page = cfg.page || "page";
    return track("page_view", p);
  }

  w.addEventListener("online", function () { backoff = 0; schedule(0); });
  w.addEventListener("pagehide", function () { flush(true); });
  d.addEventListener("visibilitychange", function () { if (d.visibilityState === "hidden") flush(true); });

  w.clickstream = { version: "1", page: page, track: track, flush: flush,
    pending: function () { return load().length; }, userId: userId,
    sessionId: function () { try { return JSON.parse(store(SID)).id; } catch (e) { return null; } } };
  if (cfg.autoPageView !== "false") page();
  // Events left by an earlier page (closed before the collector answered) go out now.
  if (load().length) schedule(0);
})(window, document);
