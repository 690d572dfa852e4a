// PushFleet admin page: the public API, called with the key the operator enters (kept in
// sessionStorage: this tab only). Data goes into the page as text, never as HTML.
"use strict";

const KEY = "pushfleet.apiKey";
const POLL_MS = 2000;
const RATE_WINDOW_MS = 15000;
const QUEUE_PAGE = 50;
const $ = (id) => document.getElementById(id);

class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers["Authorization"] = "Bearer " + key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  const value = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = (value && value.error) || { code: "http_" + response.status, message: response.statusText };
    throw new APIError(response.status, error.code, error.message);
  }
  return value;
}

function showError(error) {
  $("error").textContent = error ? (error.status ? error.status + " " : "") + error.message : "";
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function formatTime(ms) {
  return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "–";
}

function formatUptime(startedAt) {
  if (!startedAt) return "–";
  let seconds = Math.max(0, Math.floor((Date.now() - startedAt) / 1000));
  const days = Math.floor(seconds / 86400); seconds %= 86400;
  const hours = Math.floor(seconds / 3600); seconds %= 3600;
  const minutes = Math.floor(seconds / 60);
  return days ? `${days}d ${hours}h` : hours ? `${hours}h ${minutes}m` : `${minutes}m ${seconds % 60}s`;
}

// Overview -------------------------------------------------------------------------------

// Readings of /v1/stats within RATE_WINDOW_MS; a rate is what each node (one run of it: id and
// startedAt) counted between the oldest and the newest reading, over the time between them.
const readings = [];

function totalsByRun(stats) {
  const runs = new Map();
  for (const node of stats.nodes) runs.set("n/" + node.id + "/" + node.startedAt, node);
  for (const control of stats.controls) runs.set("c/" + control.id + "/" + control.startedAt, control);
  return runs;
}

function rate(field) {
  if (readings.length < 2) return null;
  const first = readings[0], last = readings[readings.length - 1];
  const seconds = (last.at - first.at) / 1000;
  if (seconds <= 0) return null;
  let counted = 0;
  for (const [run, now] of last.runs) {
    const before = first.runs.get(run);
    if (before && field in now) counted += now[field] - before[field];
  }
  return counted / seconds;
}

function formatRate(value) {
  return value === null ? "…" : value < 10 ? value.toFixed(1) : Math.round(value).toLocaleString("en");
}

function renderStats(stats) {
  readings.push({ at: stats.at, runs: totalsByRun(stats) });
  while (readings.length > 2 && stats.at - readings[0].at > RATE_WINDOW_MS) readings.shift();
  $("nodes-count").textContent = stats.nodes.length;
  $("terminals-online").textContent = stats.connections;
  $("queued").textContent = stats.queued;
  $("rate-in").textContent = formatRate(rate("pushes"));
  $("rate-out").textContent = formatRate(rate("delivered"));
  $("rate-acked").textContent = formatRate(rate("acknowledged"));
  const body = $("nodes-table").tBodies[0];
  body.replaceChildren();
  for (const node of stats.nodes) {
    const row = body.insertRow();
    row.dataset.node = node.id;
    cell(row, node.id);
    cell(row, node.mqtt || "–");
    cell(row, node.connections);
    cell(row, node.delivered);
    cell(row, node.acknowledged);
    cell(row, formatUptime(node.startedAt));
  }
  $("totals").textContent = `Since the live nodes started: ${stats.pushes} pushes accepted by ${stats.controls.length} control node(s), ` +
    `${stats.delivered} messages delivered, ${stats.acknowledged} acknowledged. Queued: messages waiting in terminals' lists. ` +
    `Read ${formatTime(stats.at)}.`;
}

async function poll() {
  try {
    const ready = await fetch("/readyz");
    $("redis").textContent = ready.ok ? "up" : "down";
    $("redis").className = "value " + (ready.ok ? "yes" : "no");
    renderStats(await api("GET", "/v1/stats"));
    $("connection").textContent = "live";
    $("connection").className = "badge ok";
    if ($("error").dataset.from === "poll") { showError(null); delete $("error").dataset.from; }
  } catch (error) {
    $("connection").textContent = error.status === 401 || error.status === 403 ? "key needed" : "unreachable";
    $("connection").className = "badge bad";
    showError(error);
    $("error").dataset.from = "poll";
  }
}

// Terminal lookup ------------------------------------------------------------------------

let queueOffset = 0;

async function loadQueue(terminal, offset) {
  const page = await api("GET", `/v1/terminals/${encodeURIComponent(terminal)}/queue?offset=${offset}&limit=${QUEUE_PAGE}`);
  const body = $("queue-table").tBodies[0];
  if (offset === 0) body.replaceChildren();
  for (const entry of page.entries) {
    const row = body.insertRow();
    cell(row, entry.id);
    cell(row, entry.topic);
    cell(row, entry.qos);
    cell(row, entry.size);
    cell(row, entry.collapseKey || "");
    cell(row, entry.age === undefined ? "–" : formatUptime(Date.now() - entry.age * 1000));
    cell(row, entry.expiresAt ? formatTime(entry.expiresAt) : "never");
    const withdraw = document.createElement("button");
    withdraw.type = "button";
    withdraw.textContent = "Withdraw";
    withdraw.addEventListener("click", async () => {
      try {
        await api("DELETE", `/v1/terminals/${encodeURIComponent(terminal)}/queue/${encodeURIComponent(entry.id)}`);
        row.remove();
      } catch (error) {
        showError(error);
      }
    });
    row.insertCell().append(withdraw);
  }
  queueOffset = offset + page.entries.length;
  $("queue-more").hidden = queueOffset >= page.total;
}

async function lookUpTerminal(event) {
  event.preventDefault();
  const terminal = $("terminal-id").value.trim();
  try {
    const status = await api("GET", `/v1/terminals/${encodeURIComponent(terminal)}`);
    $("terminal-online").textContent = status.online ? "yes" : "no";
    $("terminal-online").className = status.online ? "yes" : "no";
    $("terminal-node").textContent = status.node || "–";
    $("terminal-connected").textContent = formatTime(status.connectedAt);
    $("terminal-subscriptions").textContent = status.subscriptions.length ? status.subscriptions.join(", ") : "none";
    $("terminal-queued").textContent = status.queued + (status.queued === 1 ? " message" : " messages");
    await loadQueue(terminal, 0);
    $("terminal-result").hidden = false;
    showError(null);
  } catch (error) {
    showError(error);
  }
}

// Message lookup -------------------------------------------------------------------------

async function lookUpMessage(event) {
  if (event) event.preventDefault();
  const id = $("message-id").value.trim();
  try {
    const status = await api("GET", `/v1/messages/${encodeURIComponent(id)}`);
    const fields = $("message-fields");
    fields.replaceChildren();
    for (const name of ["id", "kind", "qos", "ttl", "createdAt", "targets", "queued", "delivered", "acknowledged", "expired", "dropped", "replaced", "withdrawn", "cancelledAt", "nodes", "storedForSessions", "error"]) {
      if (!(name in status)) continue;
      const term = document.createElement("dt");
      term.textContent = name;
      const value = document.createElement("dd");
      value.id = "status-" + name;
      value.textContent = name === "createdAt" || name === "cancelledAt" ? formatTime(status[name]) : status[name];
      fields.append(term, value);
    }
    const body = $("message-terminals").tBodies[0];
    body.replaceChildren();
    for (const [terminal, state] of Object.entries(status.terminals).sort()) {
      const row = body.insertRow();
      cell(row, terminal);
      cell(row, state);
    }
    $("message-cancel").hidden = status.kind !== "unicast" || "cancelledAt" in status || status.queued === 0;
    $("message-result").hidden = false;
    showError(null);
  } catch (error) {
    showError(error);
  }
}

async function cancelMessage() {
  const id = $("message-id").value.trim();
  try {
    const outcome = await api("DELETE", `/v1/messages/${encodeURIComponent(id)}`);
    $("message-cancelled").textContent = `Cancelled: ${outcome.withdrawn} withdrawn, ${outcome.inFlight} in flight, ${outcome.gone} gone before.`;
    await lookUpMessage();
  } catch (error) {
    showError(error);
  }
}

// Test push ------------------------------------------------------------------------------

async function sendPush(event) {
  event.preventDefault();
  const audience = $("push-audience").value;
  const target = $("push-target").value.trim();
  const push = { payload: $("push-payload").value, qos: Number($("push-qos").value), ttl: Number($("push-ttl").value) };
  if (audience === "to") push.to = target.split(",").map((t) => t.trim()).filter((t) => t);
  else if (audience === "topic") push.topic = target;
  else push.broadcast = true;
  try {
    const receipt = await api("POST", "/v1/push", push);
    const result = $("push-result");
    result.replaceChildren();
    result.append(`Accepted: ${receipt.id} (${receipt.targets} target${receipt.targets === 1 ? "" : "s"}) `);
    const look = document.createElement("button");
    look.type = "button";
    look.id = "push-status";
    look.textContent = "Status";
    look.addEventListener("click", () => { $("message-id").value = receipt.id; lookUpMessage(); });
    result.append(look);
    result.dataset.id = receipt.id;
    showError(null);
  } catch (error) {
    showError(error);
  }
}

// Key ------------------------------------------------------------------------------------

function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value;
  if (key) sessionStorage.setItem(KEY, key);
  $("api-key").value = "";
  $("api-key").placeholder = key ? "key set for this tab" : "kept in this tab only";
  readings.length = 0;
  poll();
}

function forgetKey() {
  sessionStorage.removeItem(KEY);
  $("api-key").placeholder = "kept in this tab only";
  readings.length = 0;
  poll();
}

$("key-form").addEventListener("submit", useKey);
$("forget-key").addEventListener("click", forgetKey);
$("terminal-form").addEventListener("submit", lookUpTerminal);
$("queue-more").addEventListener("click", () => loadQueue($("terminal-id").value.trim(), queueOffset).catch(showError));
$("message-form").addEventListener("submit", lookUpMessage);
$("message-cancel").addEventListener("click", cancelMessage);
$("push-form").addEventListener("submit", sendPush);
if (sessionStorage.getItem(KEY)) $("api-key").placeholder = "key set for this tab";
poll();
setInterval(poll, POLL_MS);
