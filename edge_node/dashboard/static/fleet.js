// The fleet table (/fleet): asks the server for the page on screen (search and paging happen there) and
// draws only those rows, reusing one <tr> per row slot. Refreshes every push interval while visible.
"use strict";

const TOKEN_KEY = "ghostpi-token";
const $ = (sel) => document.querySelector(sel);
const fleetStats = { fetched: 0, rendered: 0, rows: 0, matching: 0, page: 0, pages: 0 };
window.fleetStats = fleetStats;

(function takeToken() {
  const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();
const authHeaders = () => {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { Authorization: "Bearer " + t } : {};
};

const view = { q: "", page: 0, size: 100, problems: false, pages: 1 };
let interval = 1000;
let timer = null;
let inflight = null;

const COLUMNS = ["node", "status", "mode", "fps", "inference_ms", "cpu", "model", "server", "failovers", "heard_s"];
const NUMERIC = new Set(["fps", "inference_ms", "cpu", "failovers", "heard_s"]);

function cellText(key, value) {
  if (value === null || value === undefined) return "\u2013";
  if (key === "heard_s") return value < 1 ? "now" : `${Math.round(value)} s ago`;
  if (typeof value === "number") return key === "failovers" ? String(value) : value.toFixed(1);
  return String(value);
}

function render(data) {
  const body = $("#rows");
  while (body.rows.length < data.rows.length) {
    const tr = body.insertRow();
    for (const key of COLUMNS) {
      const td = tr.insertCell();
      if (NUMERIC.has(key)) td.className = "num";
      if (key === "status") td.className = "st";
    }
  }
  while (body.rows.length > data.rows.length) body.deleteRow(-1);
  data.rows.forEach((row, i) => {
    const tr = body.rows[i];
    tr.className = row.status;
    tr.dataset.node = row.node;
    COLUMNS.forEach((key, j) => {
      const text = cellText(key, row[key]);
      if (tr.cells[j].textContent !== text) tr.cells[j].textContent = text;
    });
  });
  const s = data.summary;
  for (const key of ["online", "stale", "offline", "unknown", "total"]) $(`#n-${key}`).textContent = s[key];
  view.page = data.page;
  view.pages = data.pages;
  $("#pageinfo").textContent =
    `page ${data.page + 1} of ${data.pages} \u00b7 ${data.matching} matching`;
  $("#empty").hidden = data.matching > 0;
  $("#following").textContent = data.predictions ? "following predictions" : "heartbeats and state";
  const lim = data.limits;
  const capped = lim.node_messages_ignored > 0;
  $("#limits").hidden = !capped;
  if (capped) $("#limits").textContent =
    `more than ${lim.max_nodes} nodes: ${lim.node_messages_ignored} messages ignored (EDGE_DASHBOARD__MAX_NODES)`;
  const b = data.broker;
  $("#conn").textContent = b.connected ? `broker ${b.host}:${b.port}` : `broker ${b.host}:${b.port}: ${b.error || "connecting"}`;
  $("#conn").classList.toggle("bad", !b.connected);
  Object.assign(fleetStats, {
    rendered: fleetStats.rendered + 1, rows: data.rows.length, matching: data.matching,
    page: data.page, pages: data.pages,
  });
}

async function refresh() {
  clearTimeout(timer);
  if (inflight) inflight.abort();
  const abort = (inflight = new AbortController());
  const params = new URLSearchParams({ q: view.q, page: view.page, size: view.size, problems: view.problems ? 1 : 0 });
  try {
    const response = await fetch(`/api/fleet?${params}`, { headers: authHeaders(), signal: abort.signal, cache: "no-store" });
    if (response.status === 401) {
      $("#conn").textContent = "viewing needs the operator token: open this page with #token=… or log in on the cards";
      $("#conn").classList.add("bad");
    } else if (response.ok) {
      fleetStats.fetched += 1;
      render(await response.json());
    }
  } catch (err) {
    if (err.name === "AbortError") return; // a newer request replaced this one
    $("#conn").textContent = "dashboard unreachable: retrying";
    $("#conn").classList.add("bad");
  } finally {
    if (inflight === abort) inflight = null;
  }
  if (!document.hidden) timer = setTimeout(refresh, interval);
}

function go(page) {
  view.page = Math.max(0, Math.min(page, view.pages - 1));
  refresh();
}

let typing = null;
$("#q").addEventListener("input", (e) => {
  clearTimeout(typing);
  typing = setTimeout(restart, 200);
});
function restart() { // any filter change: the search box as it reads now, from the first page
  clearTimeout(typing);
  view.q = $("#q").value;
  view.page = 0;
  refresh();
}
$("#problems").addEventListener("change", (e) => { view.problems = e.target.checked; restart(); });
$("#size").addEventListener("change", (e) => { view.size = Number(e.target.value); restart(); });
$("#first").addEventListener("click", () => go(0));
$("#prev").addEventListener("click", () => go(view.page - 1));
$("#next").addEventListener("click", () => go(view.page + 1));
$("#last").addEventListener("click", () => go(view.pages - 1));
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });

fetch("/api/config", { headers: authHeaders(), cache: "no-store" })
  .then((r) => (r.ok ? r.json() : null))
  .then((cfg) => { if (cfg) interval = Math.max(1000, cfg.push_interval * 1000); })
  .catch(() => {})
  .finally(refresh);
