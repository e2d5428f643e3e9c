// monitor.js - the openpmta web monitor: reads /ui/data every few seconds and draws it;
// operator and admin clients (http-access) get buttons that POST to /ui/action with the
// CSRF token /ui/session gave them. Text from the server (queue names, remote replies) is
// only ever inserted as text nodes, never as HTML. No libraries: the chart is plain SVG.
"use strict";

const SERIES = [
  ["received", "#4e79a7"], ["delivered", "#59a14f"],
  ["deferred", "#f28e2b"], ["bounced", "#e15759"],
];
const TOTALS = [
  ["queued", "queued recipients", (s) => s.recipients.queued],
  ["messages", "messages", (s) => s.messages],
  ["queues", "queues", (s) => s.queues],
  ["queues_backoff", "in backoff", (s) => s.queues_backoff],
  ["queues_paused", "paused", (s) => s.queues_paused],
  ["connections_out", "connections out", (s) => s.connections_out],
  ["delivered", "delivered", (s) => s.delivered],
  ["bounced", "bounced", (s) => s.bounced],
  ["deferred", "deferred", (s) => s.deferred],
];
const params = new URLSearchParams(location.search);
const REFRESH_MS = 1000 * Math.max(1, Number(params.get("refresh")) || 5);
const session = { role: "monitor", csrf: null };

// el - a new element with attributes (text: textContent, on*: listeners) and children
function el(tag, attrs, ...children) {
  const ns = ["svg", "polyline", "line", "text", "title"].includes(tag)
    ? "http://www.w3.org/2000/svg" : null;
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function td(text, cls) { return el("td", { text: String(text), class: cls || "" }); }
function num(n) { return td(n, "num"); }
function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: columns, text: empty }))]));
}

function drawTotals(status) {
  const box = document.getElementById("totals");
  box.replaceChildren(...TOTALS.map(([key, label, get]) =>
    el("div", { class: "card" },
      el("div", { class: "label", text: label }),
      el("div", { class: "value", id: "tot-" + key, "data-value": get(status), text: get(status) }))));
}

function drawChart(minutes) {
  const W = 760, H = 220, L = 48, R = 10, T = 10, B = 26;
  const max = Math.max(1, ...minutes.flatMap((m) => SERIES.map(([k]) => m[k])));
  const x = (i) => L + (i * (W - L - R)) / Math.max(1, minutes.length - 1);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": "recipients per minute over the last hour" });
  svg.append(el("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), stroke: "#999" }),
    el("line", { x1: L, y1: T, x2: L, y2: y(0), stroke: "#999" }),
    el("text", { x: L - 6, y: T + 10, "text-anchor": "end", "font-size": 11, text: max }),
    el("text", { x: L - 6, y: y(0), "text-anchor": "end", "font-size": 11, text: 0 }),
    el("text", { x: L, y: H - 6, "font-size": 11, text: "-60 min" }),
    el("text", { x: W - R, y: H - 6, "text-anchor": "end", "font-size": 11, text: "now" }));
  for (const [key, color] of SERIES) {
    const points = minutes.map((m, i) => `${x(i).toFixed(1)},${y(m[key]).toFixed(1)}`).join(" ");
    svg.append(el("polyline", { points, fill: "none", stroke: color, "stroke-width": 2,
      "data-series": key }, el("title", { text: key })));
  }
  document.getElementById("chart").replaceChildren(svg);
  document.getElementById("legend").replaceChildren(...SERIES.map(([key, color]) => {
    const sum = minutes.reduce((a, m) => a + m[key], 0);
    return el("li", {}, el("span", { class: "swatch", style: `background:${color}` }),
      `${key} `, el("strong", { id: "hour-" + key, "data-value": sum, text: sum }), " in the last hour");
  }));
}

async function act(what, queue, extra) {
  const q = new URLSearchParams({ do: what, queue, ...(extra || {}) });
  const out = document.getElementById("action-result");
  try {
    const r = await fetch("/ui/action?" + q, { method: "POST",
      headers: { "X-CSRF-Token": session.csrf || "" } });
    const body = await r.json();
    out.textContent = r.ok ? `${what} ${queue}: done` : `${what} ${queue}: ${body.error || r.status}`;
  } catch (e) {
    out.textContent = `${what} ${queue}: ${e}`;
  }
  refresh();
}

function actions(q) {
  if (!session.csrf) return null;
  const mode = el("select", { "aria-label": "mode of " + q.name, "data-queue": q.name,
    onchange: (ev) => act("mode", q.name, { mode: ev.target.value }) },
    ...["normal", "backoff"].map((m) => {
      const o = el("option", { value: m, text: m });
      if (m === q.mode) o.selected = true;
      return o;
    }));
  return el("td", { class: "actions" },
    el("button", { class: q.paused ? "resume" : "pause", "data-queue": q.name,
      text: q.paused ? "resume" : "pause", onclick: () => act(q.paused ? "resume" : "pause", q.name) }),
    el("button", { class: "schedule", "data-queue": q.name, text: "schedule",
      onclick: () => act("schedule", q.name) }),
    mode);
}

function drawQueues(data) {
  document.getElementById("queue-count").textContent =
    `(${data.topQueues.length} of ${data.queueCount} shown)`;
  for (const th of document.querySelectorAll(".actions-col")) th.hidden = !session.csrf;
  fill(document.querySelector("#queues tbody"), data.topQueues.map((q) =>
    el("tr", { "data-queue": q.name, class: [q.mode === "backoff" ? "backoff" : "",
      q.paused ? "paused" : ""].join(" ") },
      td(q.name), num(q.recipients), num(q.ready), num(q.deferred), num(q.inflight),
      num(q.connections), td(q.mode, "mode"), td(q.paused ? "paused" : "running", "state"),
      td(q.retry_in_s ? q.retry_in_s + " s" : ""), td(q.limit || "", "limit"),
      td(q.last_error, "error"), actions(q))),
  "no queues", 12);
}

function drawBackoff(queues) {
  fill(document.querySelector("#backoff tbody"), queues.map((q) =>
    el("tr", { "data-queue": q.name }, td(q.name), num(q.recipients),
      el("td", {}, el("ul", {}, ...q.mode_events.map((e) =>
        el("li", {}, `${e.time} ${e.from} \u2192 ${e.to}: `, el("span", { class: "reply", text: e.why }))))))),
  "no queue is in backoff", 3);
}

function drawErrors(errors) {
  fill(document.querySelector("#errors tbody"), errors.map((e) =>
    el("tr", {}, td(e.time), td(e.what), td(e.queue), td(e.text, "reply"))),
  "no errors since pmtad started", 4);
}

function drawVmtas(vmtas) {
  fill(document.querySelector("#vmtas tbody"), vmtas.map((v) =>
    el("tr", { "data-vmta": v.name }, td(v.name), num(v.queues), num(v.recipients), num(v.connections),
      num(v.backoff), num(v.paused),
      td(v.sources.length ? v.sources.map((s) => `${s.ip} ${s.state}`).join(", ")
        : "the host's default address"))),
  "no virtual MTAs", 7);
}

async function refresh() {
  const state = document.getElementById("refresh-state");
  try {
    const r = await fetch("/ui/data", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const { data } = await r.json();
    drawTotals(data.status);
    drawChart(data.minutes);
    drawQueues(data);
    drawBackoff(data.backoffQueues);
    drawErrors(data.errors);
    drawVmtas(data.vmtas);
    document.getElementById("clock").textContent = data.status.timeNow;
    state.textContent = "";
    state.className = "";
    document.body.dataset.refreshed = String(Date.now());
  } catch (e) {
    state.textContent = "pmtad not answering: " + e.message;
    state.className = "stale";
  }
}

async function start() {
  try {
    const r = await fetch("/ui/session", { cache: "no-store" });
    Object.assign(session, (await r.json()).data);
  } catch (e) { /* monitor role: no buttons */ }
  document.getElementById("role").textContent = session.role;
  document.getElementById("host").textContent = location.host;
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

window.pmtaRefresh = refresh;
start();
