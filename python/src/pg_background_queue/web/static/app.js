/*
 * pgbq web: the dashboard page.  Fetches JSON from /api/... and builds the DOM with
 * textContent and createElement only: nothing from the database is ever parsed as HTML.
 */
"use strict";

const TOKEN = document.querySelector('meta[name="pgbq-token"]').content;
const REFRESH = Number(document.querySelector('meta[name="pgbq-refresh"]').content) || 2000;
const SVG = "http://www.w3.org/2000/svg";
let features = null;
let timer = null;
let generation = 0;

/* el("td", {class: "num"}, "text", childNode, ...): an element; strings become text nodes */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function topicName(topic) { return topic === null || topic === undefined ? "(default)" : topic; }

function ago(iso, now) {
  if (!iso) return "";
  const secs = Math.max(0, (Date.parse(now || new Date().toISOString()) - Date.parse(iso)) / 1000);
  if (secs < 60) return `${secs.toFixed(secs < 10 ? 1 : 0)} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ${Math.floor(secs % 60)} s`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} min`;
  return `${Math.floor(secs / 86400)} d`;
}

function time(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

function stateBadge(state) {
  return el("span", {class: `state state-${state}`, "data-state": state}, state);
}

function taskLink(id) { return el("a", {href: `/task/${Number(id)}`}, `#${id}`); }

function flash(text, isError) {
  const box = document.getElementById("flash");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

function setHead(table, columns) {
  const thead = table.querySelector("thead");
  thead.replaceChildren(el("tr", {}, ...columns.map(c =>
    el("th", {class: c.endsWith("#") ? "num" : null}, c.replace(/#$/, "")))));
}

function fillBody(table, rows, columns, empty) {
  const body = table.querySelector("tbody");
  if (rows.length === 0) {
    body.replaceChildren(el("tr", {}, el("td", {class: "empty", colspan: columns}, empty)));
  } else {
    body.replaceChildren(...rows);
  }
}

async function api(path, body) {
  const init = {cache: "no-store", headers: {}};
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.headers["X-Pgbq-Token"] = TOKEN;
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = {error: `HTTP ${response.status}`}; }
  if (!response.ok) {
    const err = new Error(data && data.error ? data.error : `HTTP ${response.status}`);
    err.sqlstate = data ? data.sqlstate : null;
    throw err;
  }
  return data;
}

/* A confirmed action; the server's refusal is shown as it is. */
async function act(question, path, body, done) {
  if (!window.confirm(question)) return;
  try {
    const result = await api(path, body);
    flash(done(result), false);
  } catch (err) {
    flash(`refused: ${err.message}${err.sqlstate ? ` (SQLSTATE ${err.sqlstate})` : ""}`, true);
  }
  refresh();
}

function cancelButton(id) {
  return el("button", {class: "danger", "data-action": "cancel", "data-task-id": id,
    onclick: () => act(`Cancel task ${id}?`, `/api/tasks/${Number(id)}/cancel`, {},
      r => `task ${r.id}: cancel requested (now ${r.state})`)}, "cancel");
}

function retryButton(id) {
  return el("button", {"data-action": "retry", "data-task-id": id,
    onclick: () => act(`Queue task ${id} again?`, `/api/tasks/${Number(id)}/retry`, {},
      r => `task ${r.id}: queued again (now ${r.state})`)}, "retry");
}

function taskButtons(id, state) {
  const buttons = [];
  if (["pending", "retrying", "running", "waiting"].includes(state)) buttons.push(cancelButton(id));
  if (["failed", "cancelled"].includes(state)) buttons.push(retryButton(id));
  return el("span", {class: "actions"}, ...buttons);
}

function pauseButton(topic, paused) {
  const verb = paused ? "resume" : "pause";
  return el("button", {"data-action": verb, "data-topic": topicName(topic),
    onclick: () => act(`${verb[0].toUpperCase()}${verb.slice(1)} topic ${topicName(topic)}?`,
      `/api/topics/${verb}`, {topic: topic}, r => `topic ${topicName(r.topic)}: ${r.paused ? "paused" : "resumed"}`)},
  verb);
}

/* Stacked bars: finished (green) below failed (red), one per minute. */
function bars(finished, failed, width, height, scale) {
  const n = finished.length;
  const root = svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, class: "spark"});
  const step = width / n;
  const max = scale || Math.max(1, ...finished.map((f, i) => f + failed[i]));
  for (let i = 0; i < n; i++) {
    const ok = (finished[i] / max) * (height - 2);
    const bad = (failed[i] / max) * (height - 2);
    const x = i * step + 1;
    const w = Math.max(1, step - 2);
    const title = svg("title", {});
    title.textContent = `${n - 1 - i} min ago: ${finished[i]} finished, ${failed[i]} failed`;
    const group = svg("g", {});
    group.append(title);
    group.append(svg("rect", {x, y: height - ok, width: w, height: ok, fill: "#16a34a"}));
    group.append(svg("rect", {x, y: height - ok - bad, width: w, height: bad, fill: "#dc2626"}));
    root.append(group);
  }
  return root;
}

function renderChart(chart) {
  document.getElementById("chart-minutes").textContent = chart.minutes;
  const finished = new Array(chart.minutes).fill(0);
  const failed = new Array(chart.minutes).fill(0);
  for (const s of chart.series) {
    s.finished.forEach((v, i) => { finished[i] += v; });
    s.failed.forEach((v, i) => { failed[i] += v; });
  }
  const total = finished.reduce((a, b) => a + b, 0);
  const bad = failed.reduce((a, b) => a + b, 0);
  const legend = el("div", {class: "legend"},
    el("span", {class: "ok"}, `${total} finished`), " · ",
    el("span", {class: "bad"}, `${bad} failed`), " · ",
    `failure rate ${total + bad ? ((100 * bad) / (total + bad)).toFixed(1) : "0.0"}%`);
  document.getElementById("chart-all").replaceChildren(bars(finished, failed, 720, 70), legend);
}

function renderTopics(topics, chart) {
  const states = features.counted_states;
  const cols = ["topic", ...states.map(s => `${s}#`), "max parallel#", "priority#", "retries#",
    "delay s#", "timeout s#", "throughput", "failure rate#"];
  if (features.pause) cols.push("paused", "");
  const table = document.getElementById("topics");
  setHead(table, cols);
  const series = new Map(chart.series.map(s => [topicName(s.topic), s]));
  const rows = topics.map(t => {
    const s = series.get(topicName(t.topic));
    const fin = s ? s.finished.reduce((a, b) => a + b, 0) : 0;
    const bad = s ? s.failed.reduce((a, b) => a + b, 0) : 0;
    const cells = [el("td", {}, topicName(t.topic))];
    for (const state of states) cells.push(el("td", {class: "num", "data-count": state}, t.counts[state] ?? 0));
    for (const key of ["max_parallel", "priority", "retry_count", "delay_in_sec", "timeout_in_sec"]) {
      cells.push(el("td", {class: "num"}, t[key] ?? ""));
    }
    const zeros = new Array(chart.minutes).fill(0);
    cells.push(el("td", {class: "throughput"}, bars(s ? s.finished : zeros, s ? s.failed : zeros, 120, 22),
      ` ${fin + bad} in ${chart.minutes} min`));
    cells.push(el("td", {class: "num"}, fin + bad ? `${((100 * bad) / (fin + bad)).toFixed(1)}%` : ""));
    if (features.pause) {
      cells.push(el("td", {class: t.paused ? "paused" : null}, t.paused ? "paused" : "no"));
      cells.push(el("td", {}, features.can_pause ? pauseButton(t.topic, !!t.paused) : ""));
    }
    return el("tr", {"data-topic": topicName(t.topic)}, ...cells);
  });
  fillBody(table, rows, cols.length, "no topics");
}

function renderRunning(running, now) {
  const cols = ["id", "topic", "role", "worker pid#", "running for", "sql", ""];
  const table = document.getElementById("running");
  setHead(table, cols);
  document.getElementById("running-count").textContent = `${running.length} task(s)`;
  fillBody(table, running.map(t => el("tr", {"data-task-id": t.id},
    el("td", {}, taskLink(t.id)), el("td", {}, topicName(t.topic)), el("td", {}, t.owner),
    el("td", {class: "num"}, t.worker_pid ?? ""),
    el("td", {title: time(t.started_at)}, ago(t.started_at, now)),
    el("td", {class: "sql"}, t.sql), el("td", {}, cancelButton(t.id)))), cols.length, "nothing is running");
}

function errorList(history) {
  return el("ul", {class: "errors-mini"}, ...(history || []).map(e =>
    el("li", {}, `#${e.attempt} `, el("span", {class: "code"}, e.sqlstate || ""), ` ${e.message || ""}`,
      e.detail ? ` (${e.detail})` : "", el("small", {}, ` ${time(e.at)}`))));
}

function renderFailures(failures) {
  const cols = ["id", "topic", "role", "state", "attempts#", "sql", "errors (attempt, SQLSTATE, message, time)", ""];
  const table = document.getElementById("failures");
  setHead(table, cols);
  fillBody(table, failures.map(t => el("tr", {"data-task-id": t.id},
    el("td", {}, taskLink(t.id)), el("td", {}, topicName(t.topic)), el("td", {}, t.owner),
    el("td", {}, stateBadge(t.state)), el("td", {class: "num"}, t.attempts),
    el("td", {class: "sql"}, t.sql), el("td", {}, errorList(t.error_history)),
    el("td", {}, taskButtons(t.id, t.state)))), cols.length, "no failures");
}

function renderTasks(tasks) {
  const cols = ["id", "topic", "role", "state", "priority#", "attempts#", "enqueued", "sql", "last error", ""];
  const table = document.getElementById("tasks");
  setHead(table, cols);
  fillBody(table, tasks.map(t => el("tr", {"data-task-id": t.id, "data-state": t.state},
    el("td", {}, taskLink(t.id)), el("td", {}, topicName(t.topic)), el("td", {}, t.owner),
    el("td", {}, stateBadge(t.state)), el("td", {class: "num"}, t.priority),
    el("td", {class: "num"}, t.attempts), el("td", {}, time(t.joined_at)),
    el("td", {class: "sql"}, t.sql), el("td", {}, t.errors || ""),
    el("td", {}, taskButtons(t.id, t.state)))), cols.length, "no tasks");
}

function renderWorkers(workers, now) {
  const cols = ["pid#", "database", "role", "state", "task", "topic", "running for", "tasks done#"];
  const table = document.getElementById("workers");
  setHead(table, cols);
  fillBody(table, workers.map(w => el("tr", {},
    el("td", {class: "num"}, w.pid), el("td", {}, w.database ?? ""), el("td", {}, w.role ?? ""),
    el("td", {}, w.state), el("td", {}, w.task_id ? taskLink(w.task_id) : ""),
    el("td", {}, w.task_id ? topicName(w.topic) : ""),
    el("td", {}, w.running_since ? ago(w.running_since, now) : ""),
    el("td", {class: "num"}, w.tasks_done))), cols.length, "no live workers");
}

function setFeatures(f) {
  features = f;
  document.getElementById("whoami").textContent =
    `as ${f.role}${f.superuser ? " (superuser)" : ""} · extension ${f.version} in schema ${f.schema}`;
  const select = document.getElementById("filter-state");
  if (select.options.length === 1) {
    for (const s of f.states) select.append(el("option", {value: s}, s));
  }
}

function live(ok, text) {
  const node = document.getElementById("live");
  node.textContent = text;
  node.className = ok ? "live" : "live stale";
}

async function loadOverview() {
  const params = new URLSearchParams();
  const state = document.getElementById("filter-state").value;
  const topic = document.getElementById("filter-topic").value.trim();
  if (state) params.set("state", state);
  if (topic) params.set("topic", topic);
  const data = await api(`/api/overview?${params}`);
  setFeatures(data.features);
  renderChart(data.chart);
  renderTopics(data.topics, data.chart);
  renderRunning(data.running, data.now);
  renderFailures(data.failures);
  renderTasks(data.tasks);
  renderWorkers(data.workers, data.now);
}

function kvRow(name, value) {
  let shown = value;
  if (value !== null && typeof value === "object") shown = JSON.stringify(value);
  return el("tr", {"data-column": name}, el("th", {}, name),
    el("td", {class: name === "sql_statement" ? "sql" : null}, shown === null ? "" : String(shown)));
}

function depList(id, items) {
  document.getElementById(id).replaceChildren(...(items.length ? items.map(d =>
    el("li", {}, taskLink(d.id), " ", stateBadge(d.state))) : [el("li", {}, "none")]));
}

async function loadTask(id) {
  const data = await api(`/api/tasks/${id}`);
  setFeatures(data.features);
  const t = data.task;
  const title = document.getElementById("task-title");
  title.replaceChildren(`Task #${t.id} `, stateBadge(t.state));
  document.getElementById("task-actions").replaceChildren(taskButtons(t.id, t.state));
  document.querySelector("#task-columns tbody").replaceChildren(
    ...data.columns.filter(c => c !== "error_history" && c !== "result").map(c => kvRow(c, t[c])));
  const errors = document.getElementById("task-errors");
  setHead(errors, ["attempt#", "SQLSTATE", "message", "detail", "at"]);
  fillBody(errors, (t.error_history || []).map(e => el("tr", {},
    el("td", {class: "num"}, e.attempt), el("td", {}, e.sqlstate || ""), el("td", {}, e.message || ""),
    el("td", {}, e.detail || ""), el("td", {}, time(e.at)))), 5, "no failed attempt");
  document.getElementById("task-result-box").hidden = !features.result;
  if (features.result) {
    document.getElementById("task-result").textContent =
      t.result === null || t.result === undefined ? "(none)" : JSON.stringify(t.result, null, 2);
  }
  const deps = document.getElementById("task-deps-box");
  deps.hidden = !features.dependencies;
  if (features.dependencies) {
    depList("task-prereqs", data.prerequisites || []);
    depList("task-dependents", data.dependents || []);
  }
}

async function refresh() {
  clearTimeout(timer);
  const gen = ++generation;
  const match = location.pathname.match(/^\/task\/(\d+)$/);
  document.getElementById("overview-view").hidden = !!match;
  document.getElementById("task-view").hidden = !match;
  let delay = REFRESH;
  try {
    const started = performance.now();
    if (match) await loadTask(Number(match[1])); else await loadOverview();
    /* a slow answer (a huge backlog) stretches the interval: the page never keeps the
       database busy more than a fifth of the time */
    delay = Math.max(REFRESH, 5 * (performance.now() - started));
    const every = delay > REFRESH ? ` (every ${(delay / 1000).toFixed(1)} s)` : "";
    live(true, `live · updated ${new Date().toLocaleTimeString()}${every}`);
  } catch (err) {
    live(false, `not updated: ${err.message}${err.sqlstate ? ` (SQLSTATE ${err.sqlstate})` : ""}`);
  }
  if (gen === generation) timer = setTimeout(refresh, delay);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("filter-state").addEventListener("change", refresh);
  document.getElementById("filter-topic").addEventListener("change", refresh);
  document.getElementById("filters").addEventListener("submit", e => { e.preventDefault(); refresh(); });
  refresh();
});
