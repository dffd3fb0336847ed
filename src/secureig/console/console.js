// The secureig console: every read and change goes through the admin API, with the session
// cookie the browser holds and, for a change, the session's CSRF token. Text from the server is
// only ever set as text, never parsed as HTML.
"use strict";

const LIMITS = ["rpm", "tpm", "concurrency", "daily_tokens", "max_num_ctx", "max_num_predict"];
const LIVE_EVERY_MS = 2000;
const LIVE_POINTS = 60;  // two minutes of readings
const SVG = "http://www.w3.org/2000/svg";
let csrf = null;
let liveTimer = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// "a, b ,c" -> ["a", "b", "c"]: the form's comma-separated lists.
const list = (text) => text.split(",").map((item) => item.trim()).filter(Boolean);
const ms = (value) => (value === null || value === undefined ? "–"
  : `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`);
const rate = (value) => (value < 10 ? value.toFixed(1) : String(Math.round(value)));

async function call(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = csrf || "";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401 && path !== "/ui/session") {
    showLogin("Your session has ended: log in again.");
    throw new Error("logged out");
  }
  if (!response.ok) {
    const detail = data.error || data.detail || response.statusText;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

function showLogin(message) {
  csrf = null;
  stopLive();
  $("nav").hidden = true;
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !message;
  $("login-error").textContent = message || "";
}

function loggedIn(session) {
  csrf = session.csrf;
  $("who").textContent = session.name;
  $("login").hidden = true;
  $("nav").hidden = false;
  show("keys");
}

function show(name) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== name;
  for (const button of document.querySelectorAll("[data-view]")) {
    button.classList.toggle("current", button.dataset.view === name);
  }
  $("page-error").hidden = true;
  stopLive();
  ({ keys: loadKeys, usage: loadUsage, backends: loadBackends, live: startLive })[name]()
    .catch(pageError);
}

function pageError(error) {
  if (error.message === "logged out") return;  // the login form already says why
  $("page-error").textContent = error.message;
  $("page-error").hidden = false;
}

function confirmThen(text, action) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  $("confirm").onclick = () => { dialog.close(); action(); };
  $("cancel").onclick = () => dialog.close();
  dialog.showModal();
}

function showSecret(secret) {
  $("new-key-secret").textContent = secret;
  $("new-key").hidden = false;
}

// ---- keys

function limitsText(limits) {
  return LIMITS.filter((n) => limits[n] !== null && limits[n] !== undefined)
    .map((n) => `${n} ${limits[n]}`).join(", ") || "none";
}

async function loadKeys() {
  const revoked = $("show-revoked").checked;
  const keys = await call("GET", `/admin/keys${revoked ? "?include_revoked=true" : ""}`);
  const rows = keys.map((key) => {
    const actions = el("td", { class: "actions" });
    const row = el("tr", { "data-testid": "key-row" },
      el("td", {}, key.name), el("td", {}, key.prefix + "…"), el("td", {}, key.scopes.join(" ")),
      el("td", {}, key.models.join(", ") || "every model"), el("td", {}, limitsText(key.limits)),
      el("td", {}, key.allow_from.join(", ") || "anywhere"), el("td", {}, key.status), el("td", {}, key.expires_at || "never"),
      el("td", {}, key.last_used_at || "never"), actions);
    if (key.status !== "active") {
      row.classList.add("inactive");  // revoked or expired: nothing left to change
      return row;
    }
    const edit = el("button", { type: "button", "data-testid": "edit-key" }, "Edit");
    edit.onclick = () => editKey(key);
    const rotate = el("button", { type: "button" }, "Rotate");
    rotate.onclick = () => confirmThen(`Rotate ${key.name}? Its current secret stops working.`,
      () => rotateKey(key.name).catch(pageError));
    const revoke = el("button", { type: "button", "data-testid": "revoke-key" }, "Revoke");
    revoke.onclick = () => confirmThen(`Revoke ${key.name}? This cannot be undone.`,
      () => revokeKey(key.name).catch(pageError));
    actions.append(edit, rotate, revoke);
    return row;
  });
  $("key-rows").replaceChildren(...rows);
}

function editKey(key) {
  $("edit-key-name").textContent = key.name;
  for (const box of document.querySelectorAll("input[name=edit-scope]")) {
    box.checked = key.scopes.includes(box.value);
  }
  $("edit-key-models").value = key.models.join(", ");
  $("edit-key-allow-from").value = key.allow_from.join(", ");
  $("edit-key-expires").value = "";
  for (const name of LIMITS) {
    const value = key.limits[name];
    $(`edit-limit-${name}`).value = value === null || value === undefined ? "" : String(value);
  }
  $("edit-error").hidden = true;
  $("edit-key").onsubmit = (event) => saveKey(event, key);
  $("edit-dialog").showModal();
}

async function saveKey(event, key) {
  event.preventDefault();
  // Only what changed is sent: the API keeps what a PATCH leaves out, and 0 removes a limit.
  const body = {};
  const scopes = [...document.querySelectorAll("input[name=edit-scope]:checked")]
    .map((box) => box.value);
  if (scopes.join(" ") !== key.scopes.join(" ")) body.scopes = scopes;
  const models = list($("edit-key-models").value);
  if (models.join(",") !== key.models.join(",")) body.models = models;
  const networks = list($("edit-key-allow-from").value);
  if (networks.join(",") !== key.allow_from.join(",")) body.allow_from = networks;
  const expires = $("edit-key-expires").value.trim();
  if (expires) body.expires_in = expires;
  for (const name of LIMITS) {
    const text = $(`edit-limit-${name}`).value.trim();
    const value = text ? Number(text) : null;
    const current = key.limits[name] === undefined ? null : key.limits[name];
    if (value !== current) body[name] = value === null ? 0 : value;
  }
  try {
    await call("PATCH", `/admin/keys/${encodeURIComponent(key.name)}`, body);
    $("edit-dialog").close();
    await loadKeys();
  } catch (error) {
    if (error.message === "logged out") { $("edit-dialog").close(); return; }
    $("edit-error").textContent = error.message;
    $("edit-error").hidden = false;
  }
}

async function rotateKey(name) {
  showSecret((await call("POST", `/admin/keys/${encodeURIComponent(name)}/rotate`)).secret);
  await loadKeys();
}

async function revokeKey(name) {
  await call("DELETE", `/admin/keys/${encodeURIComponent(name)}`);
  await loadKeys();
}

async function createKey(event) {
  event.preventDefault();
  const body = {
    name: $("create-key-name").value.trim(),
    scopes: [...document.querySelectorAll("input[name=scope]:checked")].map((box) => box.value),
    models: list($("create-key-models").value),
    allow_from: list($("create-key-allow-from").value),
  };
  const expires = $("create-key-expires").value.trim();
  if (expires) body.expires_in = expires;
  for (const name of LIMITS) {
    const value = $(`limit-${name}`).value.trim();
    if (value) body[name] = Number(value);
  }
  try {
    const made = await call("POST", "/admin/keys", body);
    $("create-error").hidden = true;
    event.target.reset();
    showSecret(made.secret);
    await loadKeys();
  } catch (error) {
    if (error.message === "logged out") return;
    $("create-error").textContent = error.message;
    $("create-error").hidden = false;
  }
}

// ---- usage

const SINCE_HOURS = { "24h": 24, "7d": 168, "30d": 720 };

async function loadUsage() {
  const since = $("usage-since").value;
  const by = $("usage-by").value;
  const per = $("usage-per").value;
  const [groups, keys, buckets] = await Promise.all([
    call("GET", `/admin/usage?by=${by}&since=${since}`),
    by === "key" ? null : call("GET", `/admin/usage?by=key&since=${since}`),
    call("GET", `/admin/usage?by=${per}&since=${since}`),
  ]);
  const sum = (field) => groups.reduce((total, g) => total + g[field], 0);
  $("usage-requests").textContent = sum("requests");
  $("usage-errors").textContent = sum("errors");
  $("usage-prompt").textContent = sum("prompt_tokens");
  $("usage-completion").textContent = sum("completion_tokens");
  $("usage-group").textContent = by[0].toUpperCase() + by.slice(1);
  $("usage-rows").replaceChildren(...groups.map((g) => el("tr", {},
    el("td", {}, g.group), el("td", {}, String(g.requests)), el("td", {}, String(g.errors)),
    el("td", {}, String(g.prompt_tokens)), el("td", {}, String(g.completion_tokens)),
    el("td", {}, ms(g.mean_ttfb_ms)), el("td", {}, ms(g.mean_duration_ms)))));
  const perKey = keys || groups;
  const busiest = perKey.slice().sort((a, b) => b.requests - a.requests).slice(0, 5);
  $("usage-busiest").replaceChildren(...busiest.map((k) => el("tr", {},
    el("td", {}, k.group), el("td", {}, String(k.requests)), el("td", {}, String(k.total_tokens)))));
  const slowest = perKey.filter((k) => k.mean_ttfb_ms !== null)
    .sort((a, b) => b.mean_ttfb_ms - a.mean_ttfb_ms).slice(0, 5);
  $("usage-slowest").replaceChildren(...slowest.map((k) => el("tr", {},
    el("td", {}, k.group), el("td", {}, ms(k.mean_ttfb_ms)), el("td", {}, ms(k.mean_duration_ms)))));
  drawUsage(fillBuckets(buckets, per, SINCE_HOURS[since]));
}

// Every hour or day of the period, those without a request as zero, oldest first.
function fillBuckets(rows, per, hours) {
  const found = new Map(rows.map((row) => [row.group, row]));
  const step = per === "hour" ? 3600e3 : 86400e3;
  const name = (t) => {
    const iso = new Date(t).toISOString();
    return per === "hour" ? `${iso.slice(0, 10)} ${iso.slice(11, 13)}:00` : iso.slice(0, 10);
  };
  const now = Date.now();
  const out = [];
  for (let t = Math.floor((now - hours * 3600e3) / step) * step; t <= now; t += step) {
    const group = name(t);
    out.push(found.get(group) || { group, requests: 0, total_tokens: 0 });
  }
  return out;
}

function drawUsage(buckets) {
  const chart = $("usage-chart");
  const [left, top, width, height] = [44, 10, 630, 140];
  const most = Math.max(1, ...buckets.map((b) => b.requests));
  const tokens = Math.max(1, ...buckets.map((b) => b.total_tokens));
  const slot = width / Math.max(buckets.length, 1);
  const parts = [
    svg("line", { x1: left, y1: top + height, x2: left + width, y2: top + height, class: "axis" }),
    svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, String(most)),
    svg("text", { x: left - 4, y: top + height, "text-anchor": "end" }, "0"),
    svg("text", { x: left + width + 4, y: top + 8, class: "tokens" }, String(tokens)),
  ];
  const points = [];
  const every = Math.ceil(buckets.length / 8);
  buckets.forEach((bucket, i) => {
    const h = (bucket.requests / most) * height;
    const bar = svg("rect", {
      x: left + i * slot + slot * 0.1, y: top + height - h,
      width: Math.max(slot * 0.8, 1), height: h, class: "requests",
    });
    bar.append(svg("title", {}, `${bucket.group}: ${bucket.requests} requests,`
      + ` ${bucket.total_tokens} tokens`));
    parts.push(bar);
    points.push(`${left + (i + 0.5) * slot},${top + height - (bucket.total_tokens / tokens) * height}`);
    if (i % every === 0) {
      parts.push(svg("text", { x: left + i * slot, y: top + height + 14 }, bucket.group.slice(5)));
    }
  });
  parts.push(svg("polyline", { points: points.join(" "), class: "tokens" }));
  chart.replaceChildren(...parts);
}

// ---- backends

async function loadBackends() {
  const backends = await call("GET", "/admin/backends");
  $("backend-rows").replaceChildren(...backends.map((b) => el("tr", { "data-testid": "backend-row" },
    el("td", {}, b.name), el("td", {}, b.kind),
    el("td", { class: b.state }, b.state + (b.why ? `: ${b.why}` : "")),
    el("td", {}, b.models.join(", ")), el("td", {}, b.loaded.map((m) => m.name).join(", ")),
    el("td", {}, String(b.in_flight)), el("td", {}, String(b.queued)),
    el("td", {}, b.recent_errors.join("; ")))));
}

// ---- live

let previous = null;
let history = [];

function stopLive() {
  if (liveTimer !== null) clearInterval(liveTimer);
  liveTimer = null;
}

async function startLive() {
  previous = null;
  history = [];
  await readLive();
  liveTimer = setInterval(() => readLive().catch(pageError), LIVE_EVERY_MS);
}

async function readLive() {
  const now = await call("GET", "/admin/live");
  if ($("live").hidden) return;  // another page was chosen while this reading was on its way
  // A restart, or another replica behind a load balancer, starts the rates afresh.
  const last = previous && now.uptime_seconds > previous.uptime_seconds
    && now.requests >= previous.requests ? previous : null;
  const seconds = last ? now.uptime_seconds - last.uptime_seconds : 0;
  const per = (field) => (last ? (now[field] - last[field]) / seconds : null);
  const rps = per("requests");
  if (rps !== null) history = [...history, rps].slice(-LIVE_POINTS);
  $("live-rps").textContent = rps === null ? "–" : rate(rps);
  $("live-tps").textContent = rps === null ? "–" : rate(per("tokens_out"));
  $("live-errors").textContent = rps === null ? "–" : rate(per("server_errors"));
  $("live-streams").textContent = String(now.streams);
  $("live-in-flight").textContent = String(now.in_flight);
  $("live-connections").textContent = String(now.connections);
  $("live-refusals").replaceChildren(...Object.entries(now.refusals).map(([reason, count]) => {
    const recent = last ? count - (last.refusals[reason] || 0) : 0;
    return el("tr", { "data-testid": "live-refusal", class: recent ? "recent" : "" },
      el("td", {}, reason), el("td", {}, String(count)), el("td", {}, recent ? `+${recent}` : ""));
  }));
  if (!Object.keys(now.refusals).length) {
    $("live-refusals").replaceChildren(el("tr", {}, el("td", { colspan: "3" }, "none yet")));
  }
  $("live-backends").replaceChildren(...now.backends.map((b) => el("tr", {},
    el("td", {}, b.name), el("td", { class: b.state }, b.state),
    el("td", {}, String(b.in_flight)), el("td", {}, String(b.queued)))));
  $("live-status").textContent = `Read at ${new Date().toLocaleTimeString()}, every`
    + ` ${LIVE_EVERY_MS / 1000} s, from the replica that answered (up`
    + ` ${Math.round(now.uptime_seconds)} s).`;
  drawLive();
  previous = now;
}

function drawLive() {
  const chart = $("live-chart");
  const [left, top, width, height] = [44, 8, 660, 96];
  const most = Math.max(1, ...history);
  const step = width / (LIVE_POINTS - 1);
  const offset = LIVE_POINTS - history.length;
  const points = history.map((value, i) =>
    `${left + (offset + i) * step},${top + height - (value / most) * height}`);
  chart.replaceChildren(
    svg("line", { x1: left, y1: top + height, x2: left + width, y2: top + height, class: "axis" }),
    svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, rate(most)),
    svg("text", { x: left - 4, y: top + height, "text-anchor": "end" }, "0"),
    svg("polyline", { points: points.join(" "), class: "requests" }),
  );
}

// ---- start

document.addEventListener("DOMContentLoaded", async () => {
  for (const [fieldset, prefix] of [["limits", "limit"], ["edit-limits", "edit-limit"]]) {
    for (const name of LIMITS) {
      $(fieldset).append(el("label", {}, name + " ", el("input", {
        id: `${prefix}-${name}`, "data-testid": `${prefix}-${name}`, type: "number", min: "1",
        step: "1",
      })));
    }
  }
  $("edit-cancel").onclick = () => $("edit-dialog").close();
  $("show-revoked").onchange = () => loadKeys().catch(pageError);
  for (const button of document.querySelectorAll("[data-view]")) {
    button.onclick = () => show(button.dataset.view);
  }
  $("login-form").onsubmit = async (event) => {
    event.preventDefault();
    try {
      const session = await call("POST", "/ui/session", { key: $("login-key").value });
      $("login-key").value = "";
      loggedIn(session);
    } catch (error) {
      showLogin(error.message);
    }
  };
  $("logout").onclick = async () => {
    await call("DELETE", "/ui/session").catch(() => {});
    showLogin("");
  };
  $("create-key").onsubmit = createKey;
  $("copy-secret").onclick = () => navigator.clipboard.writeText($("new-key-secret").textContent);
  $("hide-secret").onclick = () => { $("new-key-secret").textContent = ""; $("new-key").hidden = true; };
  $("usage-since").onchange = () => {
    // A day's chart per hour, longer periods per day; either can still be chosen after.
    $("usage-per").value = $("usage-since").value === "24h" ? "hour" : "day";
    loadUsage().catch(pageError);
  };
  $("usage-by").onchange = () => loadUsage().catch(pageError);
  $("usage-per").onchange = () => loadUsage().catch(pageError);
  try {
    loggedIn(await call("GET", "/ui/session"));
  } catch {
    showLogin("");
  }
});
