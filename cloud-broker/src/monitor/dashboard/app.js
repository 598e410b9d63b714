// The fleet monitor's dashboard: plain JS over the monitor's JSON API, refreshed every 2 s.
"use strict";

const REFRESH_MS = 2000;
const state = { sort: "id", desc: false, filter: "", status: "", lossy: false, timer: null };
const $ = (s) => document.querySelector(s);

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function num(n) { return n == null ? "–" : Number(n).toLocaleString("en-US"); }
function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return s + "s ago";
  if (s < 7200) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
}
function bytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + u[i];
}
function card(label, value, cls) {
  return `<div class="card ${cls || ""}"><div class="label">${esc(label)}</div><div class="value">${esc(value)}</div></div>`;
}
function fact(label, value) {
  return `<div class="fact"><div class="label">${esc(label)}</div><div class="value">${esc(value)}</div></div>`;
}
async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function route() {
  const h = location.hash || "#/";
  if (h.startsWith("#/device/")) return { page: "device", id: decodeURIComponent(h.slice(9)) };
  if (h.startsWith("#/cluster")) return { page: "cluster" };
  return { page: "fleet" };
}

function show(page) {
  for (const p of ["fleet", "device", "cluster"]) $(`#page-${p}`).hidden = p !== page;
  $("#nav-fleet").classList.toggle("active", page !== "cluster");
  $("#nav-cluster").classList.toggle("active", page === "cluster");
}

async function refresh() {
  const r = route();
  show(r.page);
  try {
    const feed = await get("/api/monitor");
    const bad = feed.feed.startsWith("error");
    $("#feed").textContent = `${feed.feed} · ${num(feed.records)} records read · lag ${num(feed.lag)}`;
    $("#feed-dot").className = "dot " + (bad ? "bad" : feed.lag > 0 ? "warn" : "ok");
    if (r.page === "fleet") await fleet(feed);
    else if (r.page === "device") await device(r.id);
    else await cluster();
    $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("#feed").textContent = "monitor unreachable: " + e.message;
    $("#feed-dot").className = "dot bad";
  }
}

async function fleet(feed) {
  const q = new URLSearchParams({ sort: (state.desc ? "-" : "") + state.sort, limit: "500" });
  if (state.filter) q.set("filter", state.filter);
  if (state.status) q.set("status", state.status);
  if (state.lossy) q.set("lossy", "true");
  const [list, gws] = await Promise.all([get("/api/devices?" + q), get("/api/gateways")]);
  const gwOnline = gws.filter((g) => g.online).length;
  const backlog = gws.reduce((s, g) => s + g.backlog_records, 0);
  $("#cards").innerHTML =
    card("Devices", num(list.total)) +
    card("Online", num(list.online), "ok") +
    card("Offline", num(list.total - list.online), list.total - list.online ? "bad" : "") +
    card("Readings missing", num(list.missing), list.missing ? "warn" : "") +
    card("Gateways online", `${gwOnline} / ${gws.length}`, gwOnline < gws.length ? "bad" : "ok") +
    card("Edge backlog", num(backlog), backlog ? "warn" : "") +
    card("Monitor lag", num(feed.lag), feed.lag ? "warn" : "");
  const rows = list.devices.map((d) => {
    const vals = Object.entries(d.last_values).map(([c, v]) => `ch${esc(c)}: ${Number(v).toFixed(2)}`).join("  ");
    const st = d.online ? "online" : "offline";
    return `<tr data-device="${esc(d.id)}" data-online="${d.online}">
      <td><span class="dot ${d.online ? "ok" : "bad"}"></span> <span class="status-${st}">${st}</span></td>
      <td><a href="#/device/${encodeURIComponent(d.id)}">${esc(d.id)}</a></td>
      <td>${esc(d.gateway || "–")}</td>
      <td class="num">${esc(d.boot)}</td>
      <td class="num">${num(d.readings)}</td>
      <td class="num ${d.missing ? "lossy" : ""}">${num(d.missing)}</td>
      <td class="num ${d.dropped_overflow ? "lossy" : ""}">${num(d.dropped_overflow)}</td>
      <td class="num">${num(d.duplicates)}</td>
      <td class="num">${d.rate.toFixed(1)}</td>
      <td>${vals || "–"}</td>
      <td>${ago(d.last_seen_ms)}</td></tr>`;
  });
  $("#devices tbody").innerHTML = rows.join("") || `<tr><td colspan="11" class="empty">No devices${list.total ? " match" : " yet: the monitor lists a device from its first reading or status"}</td></tr>`;
  $("#devices-foot").textContent = list.matched > list.devices.length ? `${list.devices.length} of ${num(list.matched)} shown` : `${num(list.matched)} devices`;
  for (const th of document.querySelectorAll("#devices th[data-sort]")) {
    th.classList.toggle("sorted", th.dataset.sort === state.sort);
    th.classList.toggle("desc", th.dataset.sort === state.sort && state.desc);
  }
  $("#gateways tbody").innerHTML = gws.map((g) => `<tr data-gateway="${esc(g.id)}" data-online="${g.online}">
      <td><span class="dot ${g.online ? "ok" : "bad"}"></span> <span class="status-${g.online ? "online" : "offline"}">${g.online ? "online" : "offline"}</span></td>
      <td>${esc(g.id)}</td><td class="num">${num(g.devices)}</td>
      <td class="num ${g.backlog_records ? "lossy" : ""}" title="${bytes(g.backlog_bytes)}">${num(g.backlog_records)}</td>
      <td class="num">${(g.oldest_age_ms / 1000).toFixed(1)}s</td>
      <td class="num ${g.dropped ? "lossy" : ""}">${num(g.dropped)}</td>
      <td class="num">${g.send_rate.toFixed(1)}</td><td>${ago(g.last_heartbeat_ms)}</td></tr>`).join("")
    || `<tr><td colspan="8" class="empty">No gateway heard from yet</td></tr>`;
}

function chart(points) {
  const W = 640, H = 180, L = 44, R = 8, T = 8, B = 22;
  if (points.length === 0) return `<div class="empty">no values</div>`;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.08; y0 -= pad; y1 += pad;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const line = points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
  const area = `${X(x0).toFixed(1)},${H - B} ${line} ${X(points[points.length - 1][0]).toFixed(1)},${H - B}`;
  let grid = "";
  for (let i = 0; i <= 4; i++) {
    const v = y0 + ((y1 - y0) * i) / 4, y = Y(v).toFixed(1);
    grid += `<line class="grid-line" x1="${L}" x2="${W - R}" y1="${y}" y2="${y}"/><text x="${L - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${v.toFixed(1)}</text>`;
  }
  const t = (ms) => new Date(ms).toLocaleTimeString();
  return `<svg class="chart-svg" data-points="${points.length}" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">
    ${grid}<line class="axis" x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}"/>
    <polygon class="area" points="${area}"/><polyline class="line" points="${line}"/>
    <text x="${L}" y="${H - 6}">${t(x0)}</text><text x="${W - R}" y="${H - 6}" text-anchor="end">${t(x1)}</text></svg>`;
}

async function device(id) {
  let d;
  try {
    d = await get("/api/devices/" + encodeURIComponent(id));
  } catch (e) {
    $("#d-title").textContent = id;
    $("#d-status").textContent = "unknown";
    $("#d-facts").innerHTML = `<div class="empty">The monitor knows no device ${esc(id)}.</div>`;
    return;
  }
  $("#d-title").textContent = d.id;
  const st = $("#d-status");
  st.textContent = d.online ? "online" : "offline";
  st.className = "pill " + (d.online ? "ok" : "bad");
  st.dataset.online = d.online;
  $("#d-facts").innerHTML =
    fact("Gateway", d.gateway || "–") + fact("Firmware", d.firmware || "–") + fact("Boot", d.boot) +
    fact("Readings", num(d.readings)) + fact("Missing", num(d.missing)) + fact("Dropped on device", num(d.dropped_overflow)) +
    fact("Duplicates", num(d.duplicates)) + fact("Rate", d.rate.toFixed(1) + "/s") +
    fact("First seen", new Date(d.first_seen_ms).toLocaleString()) + fact("Last seen", ago(d.last_seen_ms));
  const ch = Object.entries(d.channels);
  $("#charts").innerHTML = ch.length
    ? ch.map(([c, pts]) => `<div class="chart" data-channel="${esc(c)}"><h3>Channel ${esc(c)} · latest ${Number(pts[pts.length - 1][1]).toFixed(2)}</h3>${chart(pts)}</div>`).join("")
    : `<div class="empty">no readings yet</div>`;
  $("#gaps tbody").innerHTML = d.gaps.map((g) => `<tr class="gap"><td class="num">${g.boot}</td><td class="num">${g.from_seq}</td><td class="num">${g.to_seq}</td><td class="num lossy">${num(g.to_seq - g.from_seq + 1)}</td></tr>`).join("")
    || `<tr><td colspan="4" class="empty">No gaps: every reading up to the latest arrived</td></tr>`;
  $("#boots tbody").innerHTML = d.boots.map((b) => `<tr><td class="num">${b.boot}</td><td class="num">${num(b.received)}</td><td class="num">${b.highest ?? "–"}</td><td class="num ${b.missing ? "lossy" : ""}">${num(b.missing)}</td></tr>`).join("");
  const c = d.status && d.status.counters;
  $("#d-counters").innerHTML = c
    ? fact("Generated", num(c.generated)) + fact("Sent", num(c.sent)) + fact("Resent", num(c.resent)) + fact("Acked", num(c.acked)) + fact("Dropped (overflow)", num(c.dropped_overflow)) + fact("Reconnects", num(c.reconnects))
    : `<div class="empty">no status received</div>`;
}

async function cluster() {
  let c;
  try {
    c = await get("/api/cluster");
  } catch (e) {
    $("#cluster-cards").innerHTML = `<div class="empty">No cluster view here (a standalone monitor reads another cluster).</div>`;
    $("#partitions tbody").innerHTML = "";
    return;
  }
  const parts = c.partitions || [];
  // Rates between two refreshes of this node's counters.
  const t = Date.now(), prev = state.lastCluster;
  state.lastCluster = { t, produced: c.produced_records_total, fetched: c.fetched_bytes_total };
  const rate = (k) => prev && c[k + "_total"] != null && t > prev.t ? ((c[k + "_total"] - prev[k.split("_")[0]]) * 1000) / (t - prev.t) : null;
  const produced = rate("produced_records"), fetched = rate("fetched_bytes");
  $("#cluster-cards").innerHTML = card("Mode", c.mode) + card("Nodes", (c.nodes || []).length || 1) +
    card("Partitions", parts.length) + card("Controller", c.controller ?? c.node ?? "–") +
    (c.disk_available_bytes != null ? card("Disk free (this node)", bytes(c.disk_available_bytes)) : "") +
    card("Produced/s (this node)", produced == null ? "…" : num(Math.round(produced))) +
    card("Fetched/s (this node)", fetched == null ? "…" : bytes(fetched));
  $("#nodes tbody").innerHTML = (c.nodes || []).map((n) => {
    const d = n.disk || {};
    const cells = d.error
      ? `<td colspan="4" class="lossy">${esc(d.error)}</td>`
      : `<td class="num">${bytes(d.bytes)}</td><td class="num">${bytes(d.usable_bytes)}</td><td class="num">${bytes(d.total_bytes)}</td><td>${esc(d.data_dir || "–")}</td>`;
    return `<tr data-node="${esc(n.id)}"><td class="num">${esc(n.id)}</td><td>${esc(n.kafka)}</td>${cells}</tr>`;
  }).join("") || `<tr><td colspan="6" class="empty">No nodes</td></tr>`;
  $("#partitions tbody").innerHTML = parts.map((p) => `<tr><td>${esc(p.topic)}</td><td class="num">${p.partition}</td><td class="num">${p.leader ?? "–"}</td>
    <td>${esc((p.replicas || []).join(", "))}</td><td>${esc((p.isr || []).join(", "))}</td><td class="num">${num(p.high_watermark)}</td><td class="num">${num(p.log_start)}</td></tr>`).join("")
    || `<tr><td colspan="7" class="empty">No partitions</td></tr>`;
}

function later() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => { await refresh(); later(); }, REFRESH_MS);
}
function now() { refresh().then(later); }

for (const th of document.querySelectorAll("#devices th[data-sort]")) {
  th.addEventListener("click", () => {
    const k = th.dataset.sort;
    state.desc = state.sort === k ? !state.desc : ["missing", "dropped_overflow", "rate", "readings", "last_seen_ms"].includes(k);
    state.sort = k;
    now();
  });
}
let typing;
$("#filter").addEventListener("input", (e) => { clearTimeout(typing); typing = setTimeout(() => { state.filter = e.target.value.trim(); now(); }, 250); });
$("#status").addEventListener("change", (e) => { state.status = e.target.value; now(); });
$("#lossy").addEventListener("change", (e) => { state.lossy = e.target.checked; now(); });
$("#devices tbody").addEventListener("click", (e) => {
  const tr = e.target.closest("tr[data-device]");
  if (tr && !e.target.closest("a")) location.hash = "#/device/" + encodeURIComponent(tr.dataset.device);
});
window.addEventListener("hashchange", now);
now();
