// The loomd status page. No framework, no build step. Every piece of text that comes
// from the daemon or the bus goes in through textContent (el() below), never as markup.
"use strict";

const POLL_MS = 2000;
const TAIL_MAX = 200;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function $(id) { return document.getElementById(id); }

function fmtAge(seconds) {
  const s = Math.round(seconds);
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function fmtTime(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString();
}

function short(value, n) {
  const s = typeof value === "string" ? value : JSON.stringify(value);
  return s.length > n ? s.slice(0, n) + "…" : s;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// -- components and agents ------------------------------------------------------------------
function renderStatus(st) {
  const d = st.daemon;
  $("device").textContent = d.device_id;
  $("daemon").textContent =
    "v" + d.version + ", pid " + d.pid + ", up " + fmtAge(d.uptime_s) +
    ", loop lag " + d.loop_lag_ms.last.toFixed(1) + " ms" +
    ", bus " + st.bus.events_in + " events in, " + st.bus.dropped + " dropped" +
    (d.healthy ? ", healthy" : ", UNHEALTHY: " + d.problems.join("; "));
  $("daemon").className = d.healthy ? "muted" : "bad";
  const body = $("components").tBodies[0];
  body.replaceChildren();
  for (const c of st.components) {
    const tr = el("tr");
    tr.dataset.name = c.name;
    tr.append(el("td", "", c.name), el("td", "state-" + c.state, c.state));
    const health = c.healthy === null ? "-" : c.healthy ? "healthy" : "unhealthy";
    tr.append(el("td", c.healthy === false ? "bad" : c.healthy ? "ok" : "", health));
    const detail = c.reason || (c.text || []).slice(0, 2).join(" · ");
    tr.append(el("td", "detail", detail));
    body.append(tr);
  }
  const ab = $("agents").tBodies[0];
  ab.replaceChildren();
  const agents = st.agents.list;
  if (st.agents.state !== "running") {
    $("agents-note").textContent = "agents are " + st.agents.state;
  } else {
    $("agents-note").textContent = agents.length ? "" : "no agents loaded";
  }
  for (const a of agents) {
    const tr = el("tr");
    tr.append(el("td", "", a.id), el("td", "state-" + a.state, a.state),
      el("td", "", a.restarts), el("td", "", a.errors), el("td", "detail", a.last_error || ""));
    ab.append(tr);
  }
  document.body.dataset.ready = "1";
}

// -- plots ------------------------------------------------------------------------------------
// One small line plot: x is time (the last minute at least, up to the ring's ten), y is
// scaled to the highest value shown. Drawn as SVG attributes (no inline style: the CSP).
function plot(id, samples, span, column, columnB) {
  const node = $(id);
  node.replaceChildren();
  const W = 300, H = 80, PAD = 4;
  const values = samples.map((s) => s[column]);
  const both = columnB === undefined ? values : values.concat(samples.map((s) => s[columnB]));
  const top = Math.max(1, ...both);
  const last = samples.length ? samples[samples.length - 1][0] : 0;
  const x = (t) => W - (W * (last - t)) / span;
  const y = (v) => H - PAD - ((H - 2 * PAD) * v) / top;
  const line = (col, cls) => {
    const pl = svg("polyline", {
      points: samples.map((s) => x(s[0]).toFixed(1) + "," + y(s[col]).toFixed(1)).join(" "),
    });
    if (cls) pl.setAttribute("class", cls);
    node.append(pl);
  };
  if (samples.length) {
    if (columnB !== undefined) line(columnB, "out");
    line(column);
  }
  const label = svg("text", { x: 3, y: 10 });
  label.textContent = "max " + (Math.round(top * 10) / 10) + ", last " + Math.round(span / 60) + " min";
  node.append(label);
  const now = $(id + "-now");
  if (now) now.textContent = values.length ? (Math.round(values[values.length - 1] * 10) / 10).toString() : "-";
}

function renderHistory(h) {
  const f = h.fields;
  const col = (name) => f.indexOf(name);
  const s = h.samples;
  const have = s.length > 1 ? s[s.length - 1][0] - s[0][0] : 0;
  const span = Math.min(h.keep * h.interval_s, Math.max(60, have));
  plot("plot-events", s, span, col("events_in"), col("events_out"));
  plot("plot-drops", s, span, col("drops"));
  plot("plot-lag", s, span, col("lag_ms"));
}

// -- voice ------------------------------------------------------------------------------------
function waterfall(turn, stages) {
  const t = turn.timings || {};
  const rows = stages.filter(([key]) => typeof t[key] === "number");
  const end = Math.max(1, ...rows.map(([key]) => t[key]));
  const ROW = 16, LABEL = 120, MS = 64, W = 520;
  const box = svg("svg", { class: "waterfall", viewBox: "0 0 " + W + " " + (rows.length * ROW + 2),
    height: rows.length * ROW + 2 });
  let prev = 0;
  rows.forEach(([key, label], i) => {
    const v = t[key];
    const scale = (W - LABEL - MS) / end;
    const from = Math.min(prev, v);
    const name = svg("text", { x: 0, y: i * ROW + 12 });
    name.textContent = label;
    const bar = svg("rect", { x: LABEL + from * scale, y: i * ROW + 3,
      width: Math.max(2, (v - from) * scale), height: ROW - 6, rx: 2 });
    bar.dataset.stage = key;
    const ms = svg("text", { x: W - MS + 4, y: i * ROW + 12, class: "ms" });
    ms.textContent = Math.round(v) + " ms";
    box.append(name, bar, ms);
    prev = Math.max(prev, v);
  });
  return box;
}

function renderVoice(v) {
  const root = $("voice");
  root.replaceChildren();
  if (v.state !== "running") {
    $("voice-note").textContent = notRunning("voice", v);
    return;
  }
  $("voice-note").textContent = (v.muted ? "microphone muted; " : "") +
    (v.turns.length ? "ms since the end of speech" : "no interactions yet");
  for (const turn of v.turns) {
    const div = el("div", "turn");
    const wake = turn.wake ? turn.wake + " (" + turn.wake_score + ")" : "-";
    div.append(
      el("p", turn.outcome === "ok" ? "ok" : "bad",
        fmtTime(turn.started) + " " + turn.outcome + (turn.error ? ": " + turn.error : "")),
      el("p", "muted", "wake: " + wake),
      el("p", "", "heard: " + (turn.transcript || "-")),
      el("p", "", "said: " + (turn.reply || "-")),
      waterfall(turn, v.stages));
    root.append(div);
  }
}

// "the assist is disabled (...)": why a component's view is empty.
function notRunning(what, view) {
  return what + " is " + view.state + (view.reason ? " (" + view.reason + ")" : "");
}

// A component's table: a row per record, or a note saying why there is none.
function renderTable(id, view, what, records, none, row) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  if (view.state !== "running") {
    $(id + "-note").textContent = notRunning(what, view);
    return;
  }
  $(id + "-note").textContent = records.length ? "" : none;
  for (const r of records) body.append(row(r));
}

// -- assist -----------------------------------------------------------------------------------
function renderAssist(a) {
  renderTable("assist", a, "the assist", a.turns, "no turns yet", (t) => {
    const intent = t.intent && t.intent.name ? t.intent.name + " (" + t.intent.via + ")" : "-";
    const acts = (t.actions || []).map((x) => x.capability + " " + x.code).join(", ") || "-";
    const tr = el("tr");
    tr.append(el("td", "", fmtTime(t.at)), el("td", "detail", t.transcript), el("td", "", intent),
      el("td", "detail", acts), el("td", "detail", t.reply || t.error || "-"),
      el("td", "", t.timings && t.timings.total !== undefined ? t.timings.total : "-"));
    return tr;
  });
}

// -- routes -----------------------------------------------------------------------------------
function renderRoutes(r) {
  renderTable("routes", r, "the router (llm)", r.decisions, "no decisions yet", (d) => {
    const tr = el("tr");
    tr.append(el("td", "", fmtTime(d.at)), el("td", "", d.route), el("td", "", d.rule),
      el("td", "detail", d.reason), el("td", "", d.est_latency_ms),
      el("td", "", d.confidence), el("td", "", d.agent || "-"));
    return tr;
  });
}

// -- polling ----------------------------------------------------------------------------------
const views = [
  ["/api/status", renderStatus],
  ["/api/history", renderHistory],
  ["/api/voice", renderVoice],
  ["/api/routes", renderRoutes],
  ["/api/assist", renderAssist],
];

async function poll() {
  const results = await Promise.allSettled(views.map(([path]) => getJSON(path)));
  let down = 0;
  results.forEach((res, i) => {
    if (res.status === "fulfilled") {
      try { views[i][1](res.value); } catch (e) { console.error(views[i][0], e); }
    } else {
      down += 1;
    }
  });
  $("offline").hidden = down === 0;
  setTimeout(poll, POLL_MS);
}

// -- live tail --------------------------------------------------------------------------------
let source = null;
let paused = false;

function addTail(li) {
  const list = $("tail");
  list.prepend(li);  // newest first
  while (list.children.length > TAIL_MAX) list.lastChild.remove();
}

function follow(pattern) {
  if (source) source.close();
  $("tail-state").textContent = "connecting…";
  source = new EventSource("/api/events?pattern=" + encodeURIComponent(pattern));
  source.onopen = () => { $("tail-state").textContent = "following " + pattern; };
  source.onerror = () => { $("tail-state").textContent = "disconnected; retrying"; };
  source.addEventListener("bus", (msg) => {
    if (paused) return;
    const ev = JSON.parse(msg.data);
    const li = el("li", "ev");
    li.dataset.topic = ev.topic;
    li.append(el("span", "t", fmtTime(ev.ts)), el("span", "topic", ev.topic),
      el("span", "sender", ev.sender), el("span", "payload", short(ev.payload, 400)));
    addTail(li);
  });
  source.addEventListener("dropped", (msg) => {
    const n = JSON.parse(msg.data).dropped;
    addTail(el("li", "dropped", n + " events dropped: this page read too slowly"));
  });
}

function main() {
  $("tail-form").addEventListener("submit", (e) => {
    e.preventDefault();
    follow($("tail-pattern").value.trim() || "#");
  });
  $("tail-pause").addEventListener("click", () => {
    paused = !paused;
    $("tail-pause").textContent = paused ? "resume" : "pause";
  });
  follow("#");
  poll();
}

main();
