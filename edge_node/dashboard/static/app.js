// GhostPi dashboard: one stream of batched changes in, one requestAnimationFrame render of the dirty cards out.
// Every value from MQTT is shown with textContent (never parsed as HTML): node ids and labels are untrusted.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const TOKEN_KEY = "ghostpi-token";
const MODES = ["high", "balanced", "performance", "auto"];
const VERSION_COLOURS = ["#7fb3ff", "#3fb970", "#e3b341", "#c98bff", "#f0a04f", "#5fd4d4", "#f0534f"];

const app = {
  config: null,
  nodes: new Map(), // name -> {data, el, refs, visible, chartDirty, snapVersion, snapUrl}
  dirty: new Set(),
  summary: null,
  offset: 0, // server wall clock minus ours (seconds)
  frameQueued: false,
  pending: new Map(), // command id -> {node, cmd, at}
  pendingTs: [], // prediction timestamps rendered, waiting for the next frame to be painted
};

// Measured in the browser for tests and the curious: seconds from a prediction's ts to its paint.
// latencies: prediction ts -> painted; serverLags: prediction ts -> batch built on the server; renderMs: per frame.
window.ghostpiStats = { latencies: [], serverLags: [], renderMs: [], batches: 0, rendered: 0, fulls: 0, badFrames: 0 };
const keep = (list, value) => { list.push(value); if (list.length > 100000) list.splice(0, list.length - 100000); };

// --- token ---------------------------------------------------------------------------------------------

function takeTokenFromUrl() {
  const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search); // out of the address bar and history
  }
}
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
const authHeaders = () => (token() ? { Authorization: "Bearer " + token() } : {});

function showTokenState(text) { $("#token-state").textContent = text; }

// --- the stream ----------------------------------------------------------------------------------------

let retry = 1000;
let streamAbort = null;

async function connect() {
  if (streamAbort) streamAbort.abort();
  streamAbort = new AbortController();
  setConn("connecting…");
  let response;
  try {
    response = await fetch("/api/stream", { headers: authHeaders(), signal: streamAbort.signal, cache: "no-store" });
  } catch (err) {
    return reconnect("dashboard server unreachable");
  }
  if (response.status === 401) {
    setConn("viewing needs the operator token: enter it above", true);
    showTokenState("token needed");
    return; // the token form reconnects
  }
  if (!response.ok) return reconnect(await errorText(response));
  retry = 1000;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handleFrame(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (err) {
    if (err.name === "AbortError") return;
  }
  reconnect("stream ended");
}

function reconnect(why) {
  setConn(why + "; reconnecting…", true);
  setTimeout(connect, retry);
  retry = Math.min(retry * 2, 10000);
}

function handleFrame(frame) {
  let kind = "message";
  let data = "";
  for (const line of frame.split("\n")) {
    if (line.startsWith("event: ")) kind = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (!data) return;
  try {
    const msg = JSON.parse(data);
    app.offset = msg.ts - Date.now() / 1000;
    app.batchTs = msg.ts;
    if (kind === "full") applyFull(msg);
    else if (kind === "delta") applyDelta(msg);
    window.ghostpiStats.batches++;
  } catch (err) { // one frame the page cannot read is skipped; the stream and every other card go on
    window.ghostpiStats.badFrames++;
    console.warn("skipped a frame the page could not read:", err.message);
  }
}

function setConn(text, bad = false) {
  const el = $("#conn");
  el.textContent = text;
  el.classList.toggle("bad", bad);
}

function showBroker(broker) {
  if (!broker) return;
  if (broker.connected) setConn(`live · broker ${broker.host}:${broker.port}`);
  else setConn(`not connected to broker ${broker.host}:${broker.port}${broker.error ? ": " + broker.error : ""}`, true);
}

// What the server's caps left out: a capped dashboard must not look complete.
function showLimits(limits) {
  if (!limits) return;
  const parts = [];
  if (limits.node_messages_ignored) {
    parts.push(`${limits.node_messages_ignored} messages of nodes beyond the first ${limits.max_nodes} ignored ` +
      "(EDGE_DASHBOARD__MAX_NODES)");
  }
  if (limits.results_dropped) parts.push(`${limits.results_dropped} command results dropped: they came too fast`);
  if (limits.detections_dropped) parts.push(`${limits.detections_dropped} detection messages dropped: they came too fast`);
  const el = $("#limits");
  el.textContent = parts.join("; ");
  el.hidden = parts.length === 0;
}

// --- state ---------------------------------------------------------------------------------------------

function applyFull(msg) {
  window.ghostpiStats.fulls++;
  const names = new Set(msg.nodes.map((n) => n.node));
  for (const [name, node] of app.nodes) {
    if (!names.has(name)) {
      node.el.remove();
      app.nodes.delete(name);
      ranged.delete(node); // no more refreshes of a card that is gone
      if (node.asking) node.asking.abort();
    }
  }
  for (const card of msg.nodes) {
    const node = ensureNode(card.node);
    node.data = { events: [], history: [] };
    merge(node, card);
  }
  showBroker(msg.broker);
  showLimits(msg.limits);
  if (msg.summary) renderSummary(msg.summary);
  if (msg.detections) detectionsChanged(msg.detections);
  schedule();
}

function applyDelta(msg) {
  for (const change of msg.nodes) merge(ensureNode(change.node), change);
  if (msg.broker) showBroker(msg.broker);
  if (msg.limits) showLimits(msg.limits);
  if (msg.summary) renderSummary(msg.summary);
  if (msg.detections) detectionsChanged(msg.detections);
  schedule();
}

function merge(node, change) {
  const d = node.data;
  for (const key of ["status", "predictions", "heartbeat", "state", "ota", "bad_payloads"]) {
    if (key in change) d[key] = change[key];
  }
  if (change.seen) d.seen = Object.assign(d.seen || {}, change.seen);
  if (change.predictions && change.predictions.ts) {
    app.pendingTs.push(change.predictions.ts);
    if (app.batchTs) keep(window.ghostpiStats.serverLags, app.batchTs - change.predictions.ts);
  }
  if (change.events) {
    for (const ev of change.events) {
      d.events.push(ev);
      if (ev.id) app.pending.delete(ev.id);
    }
    d.events = d.events.slice(-10);
  }
  if (change.history) {
    d.history.push(...change.history);
    const horizon = Date.now() / 1000 + app.offset - (app.config ? app.config.history_seconds : 600);
    while (d.history.length && d.history[0][0] < horizon) d.history.shift();
    if (node.range === "live") node.chartDirty = true; // a recorder's range is drawn once, when it arrives
  }
  if ("snapshot" in change) {
    d.snapshot = change.snapshot;
    if (change.snapshot && change.snapshot.version !== node.snapVersion) fetchSnapshot(node);
  }
  app.dirty.add(node.name);
}

// --- cards ---------------------------------------------------------------------------------------------

const observer = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const node = app.nodes.get(entry.target.dataset.node);
    if (!node) continue;
    node.visible = entry.isIntersecting;
    if (node.visible && node.chartDirty) { app.dirty.add(node.name); schedule(); }
    if (node.visible) refreshDue(node); // a recorder's range that went stale off screen
  }
});

function ensureNode(name) {
  let node = app.nodes.get(name);
  if (node) return node;
  const el = $("#card-template").content.firstElementChild.cloneNode(true);
  el.dataset.node = name;
  const refs = {};
  for (const cls of ["name", "status", "label", "conf", "topk", "fps", "latency", "res", "model", "hb-age", "cpu",
    "rss", "camera", "counters", "ota", "ota-phase", "ota-progress", "ota-trail", "chart", "chart-span", "snap-img",
    "snap-info", "events", "ranges", "hourly-open"]) {
    refs[cls] = el.querySelector("." + cls);
  }
  refs.name.textContent = name;
  refs.name.title = name;
  node = { name, el, refs, data: { events: [], history: [] }, visible: false, chartDirty: true, snapVersion: 0,
    range: "live", past: null, asking: null, askedAt: 0, refreshError: null };
  // past: the recorder's answer for the chosen range; asking: the AbortController of its request on its way;
  // askedAt: when the last request ended (performance.now()); refreshError: why the last refresh failed
  wireCard(node);
  showRanges(node);
  app.nodes.set(name, node);
  insertSorted(el, name);
  observer.observe(el);
  $("#empty").hidden = true;
  return node;
}

function insertSorted(el, name) {
  const cards = $("#cards");
  let before = null;
  for (const other of cards.children) {
    if (other.dataset.node > name) { before = other; break; }
  }
  cards.insertBefore(el, before);
}

function schedule() {
  if (app.frameQueued) return;
  app.frameQueued = true;
  requestAnimationFrame(render);
}

function render() {
  const t0 = performance.now();
  app.frameQueued = false;
  const filter = $("#filter").value.trim().toLowerCase();
  const problemsOnly = $("#problems").checked;
  for (const name of app.dirty) {
    const node = app.nodes.get(name);
    try {
      if (node) renderCard(node, filter, problemsOnly);
    } catch (err) { // one card that cannot be drawn must not stop the others
      console.warn("could not render the card of", name, err.message);
    }
  }
  window.ghostpiStats.rendered += app.dirty.size;
  app.dirty.clear();
  keep(window.ghostpiStats.renderMs, performance.now() - t0);
  if (app.pendingTs.length) {
    const stamps = app.pendingTs;
    app.pendingTs = [];
    requestAnimationFrame(() => { // runs after the frame with these updates was painted
      const now = Date.now() / 1000;
      for (const ts of stamps) keep(window.ghostpiStats.latencies, now - ts);
    });
  }
}

const fmt = (v, digits = 1) => (typeof v === "number" ? v.toFixed(digits) : "–");

function renderCard(node, filter, problemsOnly) {
  const { el, refs, data: d } = node;
  const status = d.status || "unknown";
  el.className = "card " + status;
  refs.status.className = "badge status " + status;
  refs.status.textContent = status;
  el.hidden = (filter && !node.name.toLowerCase().includes(filter)) || (problemsOnly && status === "online");

  const p = d.predictions;
  const s = d.state || {};
  const hb = d.heartbeat || {};
  if (p) {
    refs.label.textContent = p.label || "–";
    refs.conf.textContent = typeof p.confidence === "number" ? (p.confidence * 100).toFixed(0) + "%" : "";
    renderTopK(refs.topk, p.top_k || []);
    refs.latency.textContent = `${fmt(p.latency.preprocess)} / ${fmt(p.latency.inference)} / ${fmt(p.latency.total)}`;
  }
  refs.fps.textContent = fmt(p ? p.fps : hb.fps);
  const res = (p && p.resolution) || s.resolution || hb.resolution;
  const mode = (p && p.mode) || s.mode || hb.mode;
  refs.res.textContent = res ? `${res}px ${mode || ""}` : "–";
  const m = (p && p.model && p.model.version ? p.model : s.model) || {};
  refs.model.textContent = m.version ? [m.name, m.version, m.precision, m.runtime].filter(Boolean).join(" ") : (hb.model_version || "–");
  refs.model.title = refs.model.textContent;
  refs.cpu.textContent = [hb.cpu_percent != null ? fmt(hb.cpu_percent, 0) + "%" : null,
    hb.cpu_temp_c != null ? fmt(hb.cpu_temp_c, 0) + "°C" : null].filter(Boolean).join(" ") || "–";
  refs.rss.textContent = hb.rss_mb != null ? fmt(hb.rss_mb, 0) + " MB" : "–";
  refs.camera.textContent = hb.camera || "–";
  refs.camera.classList.toggle("warn", !!hb.camera && hb.camera !== "ok");
  for (const button of el.querySelectorAll(".actions .modes button")) {
    button.classList.toggle("current", button.dataset.mode === mode);
  }
  renderCounters(refs.counters, hb, d.bad_payloads);
  renderOta(refs, d.ota);
  renderEvents(refs.events, d.events);
  renderAge(node);
  if (node.chartDirty && node.visible) { drawChart(node); node.chartDirty = false; }
}

function renderTopK(list, topK) {
  while (list.children.length < topK.length) {
    const li = document.createElement("li");
    li.append(Object.assign(document.createElement("span"), { className: "name" }),
      Object.assign(document.createElement("span"), { className: "bar" }),
      Object.assign(document.createElement("span"), { className: "p" }));
    list.append(li);
  }
  while (list.children.length > topK.length) list.lastChild.remove();
  topK.forEach(([label, conf], i) => {
    const [name, bar, pct] = list.children[i].children;
    name.textContent = label;
    bar.style.width = Math.max(1, Math.round(conf * 100)) + "px";
    pct.textContent = (conf * 100).toFixed(0) + "%";
  });
}

const KNOWN_COUNTERS = [
  "frames_dropped", "frames_failed", "reconnects", "publish_denied",
  "restarts_pipeline", "restarts_camera", "dropped_offline_predictions", "dropped_offline_heartbeat",
];

function renderCounters(box, hb, bad) {
  const items = [];
  const all = Object.assign({}, hb.other, hb);
  for (const key of KNOWN_COUNTERS) if (typeof all[key] === "number") items.push([key.replace(/_/g, " "), all[key]]);
  if (hb.pipeline != null && hb.pipeline !== "ok") items.push(["pipeline", hb.pipeline]);
  if (hb.workers_busy) items.push(["workers busy", hb.workers_busy]);
  if (hb.last_error) items.push(["last error", hb.last_error]);
  if (hb.model_source && hb.model_source !== "active") items.push(["model from", hb.model_source]);
  for (const [key, value] of Object.entries(hb.other || {})) {
    if (!KNOWN_COUNTERS.includes(key)) items.push([key.replace(/_/g, " "), value]);
  }
  if (bad) items.push(["bad payloads", bad]);
  const text = items.map(([k, v]) => `${k} ${v}`).join("|");
  if (box.dataset.text === text) return;
  box.dataset.text = text;
  box.replaceChildren(...items.map(([k, v]) => {
    const span = document.createElement("span");
    span.textContent = `${k}: ${typeof v === "number" ? +v.toFixed(2) : v}`;
    if (typeof v === "number" && v > 0) span.className = "nonzero";
    return span;
  }));
}

function renderOta(refs, ota) {
  refs.ota.hidden = !ota;
  if (!ota) return;
  const phase = ota.phase || "?";
  refs["ota-phase"].className = "ota-phase " + phase;
  refs["ota-phase"].textContent = `OTA ${phase}${ota.version ? " " + ota.version : ""}` +
    (phase === "downloading" && typeof ota.progress === "number" ? ` ${ota.progress.toFixed(0)}%` : "") +
    (ota.error ? `: ${ota.error}` : "");
  refs["ota-progress"].hidden = phase !== "downloading";
  if (typeof ota.progress === "number") refs["ota-progress"].value = ota.progress;
  refs["ota-trail"].textContent = (ota.trail || []).join(" → ");
}

function eventText(ev) {
  const detail = Object.entries(ev.detail || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  return `${ev.ok ? "✓" : "✗"} ${ev.cmd}${ev.error ? ": " + ev.error : ""}${detail ? " " + detail : ""}`;
}

function renderEvents(list, events) {
  const rows = [];
  for (const [id, p] of app.pending) {
    if (p.node !== list.closest(".card").dataset.node) continue;
    const late = Date.now() - p.at > 30000;
    rows.push({ text: `… ${p.cmd} sent, ${late ? "no answer after 30 s (offline or busy?)" : "waiting"}`, cls: "pending", id });
  }
  for (const ev of events.slice().reverse()) rows.push({ text: eventText(ev), cls: ev.ok ? "ok" : "bad", id: ev.id });
  const key = rows.map((r) => r.text + r.id).join("\n");
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren(...rows.map((r) => {
    const li = document.createElement("li");
    li.className = r.cls;
    li.textContent = r.text;
    li.title = (r.id ? r.id + ": " : "") + r.text;
    if (r.id) li.dataset.id = r.id;
    return li;
  }));
}

function renderAge(node) {
  const seen = node.data.seen || {};
  const hb = seen.heartbeat;
  const el = node.refs["hb-age"];
  if (hb == null) { el.textContent = "–"; return; }
  const age = Math.max(0, Date.now() / 1000 + app.offset - hb);
  el.textContent = age < 90 ? `${age.toFixed(0)} s ago` : `${(age / 60).toFixed(0)} min ago`;
  el.classList.toggle("warn", app.config && age > app.config.stale_after);
}

setInterval(() => {
  for (const node of app.nodes.values()) renderAge(node);
  for (const p of app.pending.values()) app.dirty.add(p.node); // "waiting" turns into "no answer" in time
  if (app.pending.size) schedule();
}, 1000);

// A card's chart: the last minutes from the stream (points [ts, fps, inference ms]), or, for a range the
// recorder answered, its buckets (drawn at their middle; a missing bucket, the node silent, breaks the line).
function drawChart(node) {
  const canvas = node.refs.chart;
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  if (node.range !== "live") {
    if (node.past) drawPast(node, ctx, w, h);
    return;
  }
  const hist = node.data.history;
  if (hist.length < 2) { node.refs["chart-span"].textContent = ""; return; }
  const span = app.config ? app.config.history_seconds : 600;
  const end = Date.now() / 1000 + app.offset;
  const x = (t) => w - ((end - t) / span) * w;
  const fpsMax = plot(ctx, hist, x, 1, "#3fb970", h, Infinity);
  const infMax = plot(ctx, hist, x, 2, "#f0a04f", h, Infinity);
  node.refs["chart-span"].textContent = `last ${Math.round(span / 60)} min · max ${fmt(fpsMax)} fps, ${fmt(infMax)} ms`;
}

function drawPast(node, ctx, w, h) {
  const past = node.past;
  const points = past.series.map((p) => [p.ts + past.step / 2, p.fps, p.inference_ms]);
  const x = (t) => ((t - past.since) / Math.max(1, past.until - past.since)) * w;
  const fpsMax = plot(ctx, points, x, 1, "#3fb970", h, past.step * 1.5);
  const infMax = plot(ctx, points, x, 2, "#f0a04f", h, past.step * 1.5);
  node.refs["chart-span"].textContent = points.length
    ? `last ${RANGE_TEXT[past.range]} · recorder · max ${fmt(fpsMax)} fps, ${fmt(infMax)} ms`
    : `last ${RANGE_TEXT[past.range]} · the recorder has no heartbeats of this node`;
  if (node.refreshError) node.refs["chart-span"].textContent += ` · refresh failed: ${node.refreshError}`;
}

// One line of points[i][index] against time (points[i][0]), scaled to its maximum; returns that maximum.
function plot(ctx, points, x, index, colour, h, maxGap) {
  let max = 0;
  for (const p of points) if (p[index] != null && p[index] > max) max = p[index];
  if (max <= 0) return 0;
  ctx.strokeStyle = colour;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let pen = false, last = -Infinity;
  for (const p of points) {
    if (p[index] == null) { pen = false; continue; }
    const y = h - 3 - (p[index] / max) * (h - 8);
    if (pen && p[0] - last <= maxGap) ctx.lineTo(x(p[0]), y); else ctx.moveTo(x(p[0]), y);
    if (points.length === 1) ctx.lineTo(x(p[0]) + 2, y); // one bucket: a dash, not nothing
    pen = true;
    last = p[0];
  }
  ctx.stroke();
  return max;
}

// --- the recorder's ranges: a card's chart and its node's label counts by hour ---------------------------
// Fetched when a range button is pressed (never on the stream): at most 120 chart points and 169 hours. While
// a range is shown it is fetched again every history_refresh_seconds[range] (/api/config; the server's
// defaults: 60 s for 1 h, 300 s for 24 h and 7 days, EDGE_DASHBOARD__HISTORY_REFRESH), only for cards on
// screen in a visible page, one request per card at a time; the old chart stays until the new answer is drawn.

const RANGE_TEXT = { "1h": "1 h", "24h": "24 h", "7d": "7 days" };
const REFRESH_FALLBACK = { "1h": 60, "24h": 300, "7d": 300 }; // seconds, should the config not say
window.ghostpiStats.history = { fetches: 0, refreshes: 0, refreshFailures: 0 };
const ranged = new Set(); // the cards showing a recorder's range

function refreshSeconds(range) {
  const table = app.config && app.config.history_refresh_seconds;
  return (table && table[range]) || REFRESH_FALLBACK[range] || 300;
}

function showRanges(node) {
  const ranges = (app.config && app.config.history_ranges) || [];
  const live = app.config ? Math.round(app.config.history_seconds / 60) : 10;
  for (const button of node.el.querySelectorAll(".ranges button[data-range]")) {
    const range = button.dataset.range;
    if (range === "live") button.textContent = `${live} min (live)`;
    else button.hidden = !ranges.includes(range);
    button.classList.toggle("current", range === node.range);
  }
  node.refs["hourly-open"].hidden = node.range === "live";
  if (node.range !== "live" && !ranges.includes(node.range)) chooseRange(node, "live");
}

async function chooseRange(node, range) {
  if (node.asking) node.asking.abort(); // a refresh (or the previous range's first fetch) on its way: not wanted
  node.asking = null;
  node.range = range;
  node.past = null;
  node.refreshError = null;
  showRanges(node);
  if (node.range !== range) return; // not a range this dashboard has (showRanges went back to live)
  if (range === "live") {
    ranged.delete(node);
    node.chartDirty = true;
    app.dirty.add(node.name);
    schedule();
    return;
  }
  ranged.add(node);
  const canvas = node.refs.chart;
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  node.refs["chart-span"].textContent = `asking the recorder for the last ${RANGE_TEXT[range]}…`;
  await fetchRange(node, range);
}

// One request for the range a card shows: its first (the caller said "asking…") or a refresh, which leaves
// the chart and the hourly table as they are until the answer, and on an error keeps them and says so.
async function fetchRange(node, range) {
  const asking = new AbortController();
  node.asking = asking;
  const refresh = node.past !== null;
  const current = () => node.range === range && node.asking === asking; // not switched, not superseded
  let text;
  try {
    const response = await fetch(`/api/nodes/${encodeURIComponent(node.name)}/history?range=${range}`,
      { headers: authHeaders(), cache: "no-store", signal: asking.signal });
    if (!current()) return; // another button was pressed meanwhile
    if (response.ok) {
      const past = await response.json();
      if (!current()) return;
      node.asking = null;
      node.askedAt = performance.now(); // the next one after a wait from here
      node.past = past;
      node.refreshError = null;
      window.ghostpiStats.history.fetches++;
      if (refresh) window.ghostpiStats.history.refreshes++;
      drawChart(node);
      if (hourly.node === node && $("#node-history").open) renderHourly(node);
      return;
    }
    text = response.status === 401 ? "viewing needs the operator token: enter it above" : await errorText(response);
  } catch (err) {
    text = "dashboard server unreachable"; // or aborted: then no longer current
  }
  if (!current()) return;
  node.asking = null;
  node.askedAt = performance.now(); // tried again after the same wait
  if (node.past) { // a refresh failed: the old answer stays, with a word
    window.ghostpiStats.history.refreshFailures++;
    node.refreshError = text;
    drawChart(node);
    if (hourly.node === node && $("#node-history").open) renderHourly(node);
    return;
  }
  node.refs["chart-span"].textContent = text;
  if (hourly.node === node && $("#node-history").open) $("#nh-state").textContent = text;
}

// A card whose range is due asks again, unless it is off screen, the page hidden, or a request is on its way.
function refreshDue(node) {
  if (node.range === "live" || node.asking || !node.visible || document.visibilityState !== "visible") return;
  if (performance.now() - (node.askedAt || 0) < refreshSeconds(node.range) * 1000) return;
  fetchRange(node, node.range);
}

setInterval(() => { if (document.visibilityState === "visible") for (const node of ranged) refreshDue(node); }, 1000);
document.addEventListener("visibilitychange", () => { for (const node of ranged) refreshDue(node); });

const hourly = { node: null };

function openHourly(node) {
  hourly.node = node;
  renderHourly(node);
  const dialog = $("#node-history");
  if (!dialog.open) dialog.showModal();
}

function hourText(t) {
  return new Date(t * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

// Hours (newest first) by the range's top labels, the others together and all; each cell shaded by its count.
function renderHourly(node) {
  const past = node.past;
  $("#nh-title").textContent = `${node.name} · labels by hour · last ${RANGE_TEXT[node.range] || node.range}`;
  const head = $("#nh-table thead"), body = $("#nh-table tbody");
  if (!past) {
    $("#nh-state").textContent = "asking the recorder…";
    head.replaceChildren();
    body.replaceChildren();
    return;
  }
  const rows = past.hourly_labels;
  $("#nh-state").textContent = rows.length ? `the recorder's predictions since ${hourText(past.hours_since)}: ` +
    `${rows.length} hours with some, the ${past.labels.length} most frequent labels`
    : "the recorder has no predictions of this node in this range";
  if (node.refreshError) $("#nh-state").textContent += ` (refresh failed: ${node.refreshError})`;
  const tr = document.createElement("tr");
  for (const name of ["hour", ...past.labels, "other", "all"]) {
    tr.append(Object.assign(document.createElement("th"), { textContent: name, title: name }));
  }
  head.replaceChildren(tr);
  let max = 1;
  for (const r of rows) for (const n of r.counts) if (n > max) max = n;
  body.replaceChildren(...rows.slice().reverse().map((r) => {
    const row = document.createElement("tr");
    row.dataset.ts = String(r.ts);
    row.append(Object.assign(document.createElement("td"), { textContent: hourText(r.ts) }));
    for (const n of [...r.counts, r.other, r.total]) {
      const td = Object.assign(document.createElement("td"), { textContent: String(n) });
      row.append(td);
    }
    r.counts.forEach((n, i) => {
      if (n) row.children[i + 1].style.background = `rgba(127, 179, 255, ${(0.12 + 0.6 * n / max).toFixed(2)})`;
    });
    return row;
  }));
}

// --- summary -------------------------------------------------------------------------------------------

function renderSummary(summary) {
  app.summary = summary;
  for (const key of ["online", "stale", "offline", "unknown", "total"]) $("#n-" + key).textContent = summary[key];
  const box = $("#versions");
  const total = Object.values(summary.versions).reduce((a, b) => a + b, 0);
  box.replaceChildren(...Object.entries(summary.versions).map(([version, count], i) => {
    const span = document.createElement("span");
    span.style.flex = String(count);
    span.style.background = VERSION_COLOURS[i % VERSION_COLOURS.length];
    span.textContent = `${version}: ${count}`;
    span.title = `model ${version} on ${count} of ${total} nodes`;
    return span;
  }));
}

// --- actions -------------------------------------------------------------------------------------------

async function errorText(response) {
  try { return (await response.json()).error || response.statusText; } catch { return response.statusText; }
}

async function send(target, body) {
  if (!token()) {
    showTokenState("enter the operator token to act");
    $("#token").focus();
    return { ok: false, error: "actions need the operator token: enter it at the top" };
  }
  let response;
  try {
    response = await fetch(`/api/nodes/${encodeURIComponent(target)}/command`, {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" }, authHeaders()),
      body: JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    return { ok: false, error: "dashboard server unreachable" };
  }
  if (response.status === 401) showTokenState("token refused");
  if (!response.ok) return { ok: false, error: await errorText(response) };
  const answer = await response.json();
  if (target !== "all") {
    app.pending.set(answer.id, { node: target, cmd: body.cmd, at: Date.now() });
    app.dirty.add(target);
    schedule();
  }
  return { ok: true, id: answer.id };
}

function note(node, text) {
  node.data.events.push({ id: null, cmd: "dashboard", ok: false, error: text, detail: {} });
  app.dirty.add(node.name);
  schedule();
}

function wireCard(node) {
  const el = node.el;
  const act = async (body) => {
    const result = await send(node.name, body);
    if (!result.ok) note(node, result.error);
  };
  for (const button of el.querySelectorAll(".actions .modes button")) {
    button.addEventListener("click", () => act({ cmd: "set_mode", mode: button.dataset.mode }));
  }
  $(".ping", el).addEventListener("click", () => act({ cmd: "ping" }));
  $(".snapshot", el).addEventListener("click", () => act({ cmd: "snapshot" }));
  $(".rollback", el).addEventListener("click", () => act({ cmd: "rollback" }));
  $(".detections", el).addEventListener("click", () => showNodeDetections(node.name));
  for (const button of el.querySelectorAll(".ranges button[data-range]")) {
    button.addEventListener("click", () => chooseRange(node, button.dataset.range));
  }
  node.refs["hourly-open"].addEventListener("click", () => openHourly(node));
  $(".update-form", el).addEventListener("submit", (e) => {
    e.preventDefault();
    act(updateBody(e.target));
  });
}

function updateBody(form) {
  const f = new FormData(form);
  return { cmd: "update_model", url: f.get("url").trim(), sha256: f.get("sha256").trim(), version: f.get("version").trim() };
}

async function fleetAction(body) {
  const out = $("#fleet-result");
  const result = await send("all", body);
  out.className = "result " + (result.ok ? "ok" : "bad");
  out.textContent = result.ok ? `${body.cmd} sent to every node (${result.id}); results appear on the cards` : result.error;
}

async function fetchSnapshot(node) {
  const version = node.data.snapshot.version;
  let response;
  try {
    response = await fetch(`/api/nodes/${encodeURIComponent(node.name)}/snapshot.jpg`, { headers: authHeaders(), cache: "no-store" });
  } catch { return; }
  if (!response.ok) { // snapshots always need the token: say so where the picture would be
    node.refs["snap-info"].textContent = await errorText(response);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  if (node.snapUrl) URL.revokeObjectURL(node.snapUrl);
  node.snapUrl = url;
  node.snapVersion = version;
  const img = node.refs["snap-img"];
  img.src = url;
  img.hidden = false;
  img.dataset.version = String(version);
  const at = new Date(node.data.snapshot.at * 1000);
  node.refs["snap-info"].textContent = `snapshot ${at.toLocaleTimeString()} · ${(node.data.snapshot.bytes / 1024).toFixed(1)} KB`;
}

// --- detections timeline -----------------------------------------------------------------------------
// The stream only says that detections changed ({version, kept}); the page asks /api/detections for what its
// filters select, at most once a second and one request at a time, so a burst of detections costs the stream
// a few bytes a tick and the page one request a second.

const DET_EVERY = 1000; // ms between two requests while detections keep arriving
const DET_LIMIT = 1000; // rows asked for (the newest that match)
const RULE_COLOURS = ["#7fb3ff", "#3fb970", "#e3b341", "#c98bff", "#f0a04f", "#5fd4d4", "#f0534f", "#b0b8c4"];
const det = { version: -1, shown: -1, inflight: false, timer: null, last: 0, rows: new Map(), data: null };
window.ghostpiStats.detections = { fetches: 0, rendered: 0, thumbnails: 0 };

function detectionsChanged(mark) {
  det.version = mark.version;
  if (mark.version !== det.shown) loadDetections();
}

function loadDetections(now = false) {
  if (det.inflight) { det.again = true; return; }
  const wait = now ? 0 : Math.max(0, det.last + DET_EVERY - Date.now());
  if (det.timer) { if (!now) return; clearTimeout(det.timer); }
  det.timer = setTimeout(fetchDetections, wait);
}

function detectionQuery() {
  const q = new URLSearchParams({ limit: String(DET_LIMIT) });
  const node = $("#det-node").value, rule = $("#det-rule").value, range = $("#det-range").value;
  if (node) q.set("node", node);
  if (rule) q.set("rule", rule);
  const serverNow = Date.now() / 1000 + app.offset;
  if (range === "custom") {
    const since = $("#det-since").value, until = $("#det-until").value;
    if (since) q.set("since", String(new Date(since).getTime() / 1000));
    if (until) q.set("until", String(new Date(until).getTime() / 1000));
  } else if (range) {
    q.set("since", (serverNow - Number(range)).toFixed(3));
  }
  return q;
}

async function fetchDetections() {
  det.timer = null;
  det.inflight = true;
  det.again = false;
  det.last = Date.now();
  const asked = det.version;
  try {
    const response = await fetch("/api/detections?" + detectionQuery(), { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) {
      $("#det-state").textContent = response.status === 401 ? "viewing detections needs the operator token: enter it above"
        : await errorText(response);
      return;
    }
    const data = await response.json();
    det.shown = asked;
    window.ghostpiStats.detections.fetches++;
    $("#det-state").textContent = "";
    renderDetections(data);
  } catch (err) {
    $("#det-state").textContent = "could not load detections: " + err.message;
  } finally {
    det.inflight = false;
    if (det.again || det.version !== det.shown) loadDetections();
  }
}

function setOptions(select, values, all) {
  const current = select.value;
  const want = [""].concat(values);
  if (current && !want.includes(current)) want.push(current); // a filter stays chosen while nothing matches it
  const have = [...select.options].map((o) => o.value);
  if (have.join("\n") === want.join("\n")) return;
  select.replaceChildren(...want.map((v) => new Option(v || all, v)));
  select.value = current;
}

const clock = (t) => {
  const d = new Date(t * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
};
const span = (cls) => Object.assign(document.createElement("span"), { className: cls });

function detectionRow(d) {
  const key = d.node + "/" + d.id;
  let li = det.rows.get(key);
  if (!li) {
    li = document.createElement("li");
    li.dataset.node = d.node;
    li.dataset.id = d.id;
    li.append(span("when"), span("node"), span("rule"), span("label"), span("conf"), span("dur"), span("frames"),
      span("reason"), span("pic"));
    det.rows.set(key, li);
  }
  const text = [clock(d.started), d.node, d.rule, d.label || "–",
    typeof d.peak_confidence === "number" ? (d.peak_confidence * 100).toFixed(0) + "%" : "–",
    d.open ? "open" : (typeof d.duration_s === "number" ? d.duration_s.toFixed(1) + " s" : "–"),
    typeof d.frames === "number" ? String(d.frames) : "–", d.open ? "" : (d.reason || "")];
  const key2 = text.join("\u0000") + (d.snapshot ? "\u0000s" : "");
  if (li.dataset.key !== key2) {
    li.dataset.key = key2;
    li.dataset.rule = d.rule;
    li.className = d.open ? "open" : "";
    text.forEach((t, i) => { li.children[i].textContent = t; });
    li.title = `${d.node} · ${d.rule} · ${d.id}${d.open ? " (open)" : ""}`;
    if (!d.snapshot) { li.children[8].replaceChildren(); delete li.dataset.thumb; }
  }
  if (d.snapshot && !li.dataset.thumb) { li.dataset.thumb = "wanted"; thumbObserver.observe(li); }
  return li;
}

function renderDetections(data) {
  det.data = data;
  setOptions($("#det-node"), data.nodes, "all nodes");
  setOptions($("#det-rule"), data.rules, "all rules");
  const rows = data.detections.map(detectionRow);
  const wanted = new Set(rows);
  for (const [key, li] of det.rows) if (!wanted.has(li)) { det.rows.delete(key); thumbObserver.unobserve(li); }
  $("#det-list").replaceChildren(...rows);
  const shown = data.detections.length;
  const open = data.detections.filter((d) => d.open).length;
  $("#det-count").textContent = `${shown < data.matching ? `newest ${shown} of ` : ""}${data.matching}` +
    ` matching · ${open} open · ${data.kept} kept`;
  const dropped = [];
  if (data.dropped) dropped.push(`${data.dropped} older dropped (EDGE_DASHBOARD__DETECTIONS_KEPT ${data.max_kept})`);
  if (data.thumbnails_dropped) dropped.push(`${data.thumbnails_dropped} snapshots dropped`);
  if (data.bad_payloads) dropped.push(`${data.bad_payloads} bad payloads`);
  $("#det-reach").textContent = (data.oldest != null ? `as far back as this dashboard has seen: ${clock(data.oldest)}`
    : "none seen yet since this dashboard started") + (dropped.length ? " · " + dropped.join(", ") : "");
  drawStrip(data);
  window.ghostpiStats.detections.rendered = rows.length;
  window.ghostpiStats.detections.matching = data.matching;
}

// One lane per rule, one bar per detection from its start to its end (or now, while open).
function drawStrip(data) {
  const canvas = $("#det-strip");
  const w = canvas.clientWidth || canvas.width;
  if (canvas.width !== w) canvas.width = w;
  const h = canvas.height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const list = data.detections;
  if (!list.length) return;
  const now = Date.now() / 1000 + app.offset;
  let start = list[list.length - 1].started;
  const range = $("#det-range").value;
  if (range && range !== "custom") start = now - Number(range);
  const width = Math.max(1, now - start);
  const lanes = data.rules.length || 1;
  const laneH = Math.max(2, Math.floor((h - 2) / Math.min(lanes, 8)));
  for (const d of list) {
    const lane = Math.max(0, data.rules.indexOf(d.rule)) % 8;
    const x0 = ((d.started - start) / width) * w;
    const x1 = (((d.open ? now : (d.ended || d.started)) - start) / width) * w;
    ctx.fillStyle = RULE_COLOURS[lane];
    ctx.globalAlpha = d.open ? 0.4 : 1; // open: it may end any moment, or its node may have stopped
    ctx.fillRect(x0, 1 + lane * laneH, Math.max(2, x1 - x0), laneH - 1);
  }
  ctx.globalAlpha = 1;
  canvas.title = `${clock(start)} to now; one lane per rule: ${data.rules.slice(0, 8).join(", ")}`;
}

// Snapshots need the token (a camera image): fetched with it, only for rows on screen, shown from blob URLs.
const thumbObserver = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    thumbObserver.unobserve(entry.target);
    loadThumb(entry.target);
  }
});

async function loadThumb(li) {
  li.dataset.thumb = "loading";
  const pic = li.children[8];
  if (!token()) {
    pic.replaceChildren(Object.assign(span("lock dim"), { textContent: "🔒 token", title: "snapshots need the operator token" }));
    return;
  }
  let response;
  try {
    response = await fetch(`/api/detections/${encodeURIComponent(li.dataset.node)}/${encodeURIComponent(li.dataset.id)}.jpg`,
      { headers: authHeaders(), cache: "no-store" });
  } catch { return; }
  if (!response.ok) { pic.replaceChildren(Object.assign(span("lock dim"), { textContent: "–", title: await errorText(response) })); return; }
  const url = URL.createObjectURL(await response.blob());
  const img = Object.assign(document.createElement("img"), { className: "thumb", alt: "snapshot", src: url });
  img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true }); // the picture stays decoded
  img.addEventListener("error", () => URL.revokeObjectURL(url), { once: true });
  pic.replaceChildren(img);
  window.ghostpiStats.detections.thumbnails++;
}

// A token entered after the rows were drawn: the thumbnails it was missing are fetched again.
function retryThumbs() {
  det.shown = -1; // and the list is asked for again (viewing may have needed the token too)
  for (const li of det.rows.values()) {
    if (li.dataset.thumb === "loading" && !li.querySelector("img")) {
      delete li.dataset.thumb;
      li.children[8].replaceChildren();
    }
  }
}

function showNodeDetections(name) {
  const select = $("#det-node");
  if (![...select.options].some((o) => o.value === name)) select.append(new Option(name, name));
  select.value = name;
  $("#timeline").open = true;
  $("#timeline").scrollIntoView({ block: "start" });
  loadDetections(true);
}

function wireTimeline() {
  const refilter = () => {
    $("#det-custom").hidden = $("#det-range").value !== "custom";
    loadDetections(true);
  };
  for (const id of ["#det-node", "#det-rule", "#det-range", "#det-since", "#det-until"]) {
    $(id).addEventListener("change", refilter);
  }
  setInterval(() => { // relative ranges move with the clock; open detections grow on the strip
    if (det.data && ($("#det-range").value || det.data.open)) {
      if ($("#det-range").value && $("#det-range").value !== "custom") loadDetections();
      else drawStrip(det.data);
    }
  }, 10000);
}

// --- start ---------------------------------------------------------------------------------------------

async function loadConfig() {
  let response = await fetch("/api/config", { headers: authHeaders(), cache: "no-store" });
  let refused = null;
  if (response.status === 429) { // too many wrong tokens from this address: say so, and carry on view-only
    refused = await errorText(response);
    response = await fetch("/api/config", { cache: "no-store" });
  }
  if (!response.ok) throw new Error(await errorText(response));
  app.config = await response.json();
  $("#prefix").textContent = app.config.prefix + "/+";
  showTokenState(refused || (token() ? (app.config.token_ok ? "token accepted" : "token refused") : "view only"));
  for (const node of app.nodes.values()) showRanges(node);
}

function start() {
  takeTokenFromUrl();
  $("#token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = $("#token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("#token").value = "";
    await loadConfig();
    retryThumbs();
    connect();
  });
  $("#token-forget").addEventListener("click", async () => {
    sessionStorage.removeItem(TOKEN_KEY);
    await loadConfig();
  });
  for (const button of document.querySelectorAll(".fleet-bar .modes button")) {
    button.addEventListener("click", () => fleetAction({ cmd: "set_mode", mode: button.dataset.mode }));
  }
  $("#fleet-ping").addEventListener("click", () => fleetAction({ cmd: "ping" }));
  wireTimeline();
  $("#nh-close").addEventListener("click", () => $("#node-history").close());
  $(".fleet-update .update-form").addEventListener("submit", (e) => {
    e.preventDefault();
    fleetAction(updateBody(e.target));
  });
  const rerender = () => { for (const name of app.nodes.keys()) app.dirty.add(name); schedule(); };
  $("#filter").addEventListener("input", rerender);
  $("#problems").addEventListener("change", rerender);
  loadConfig().then(connect, (err) => reconnect(err instanceof TypeError ? "dashboard server unreachable" : err.message));
}

start();
