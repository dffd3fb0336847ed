// The secureig console: every read and change goes through the admin API, with the session
// cookie the browser holds and, for a change, the session's CSRF token. Text from the server is
// only ever set as text, never parsed as HTML.
"use strict";

const LIMITS = ["rpm", "tpm", "concurrency", "daily_tokens", "max_num_ctx", "max_num_predict"];
let csrf = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

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
  $("page-error").hidden = true;
  ({ keys: loadKeys, usage: loadUsage, backends: loadBackends })[name]().catch(pageError);
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
  const keys = await call("GET", "/admin/keys");
  const rows = keys.map((key) => {
    const actions = el("td", {});
    const rotate = el("button", { type: "button" }, "Rotate");
    rotate.onclick = () => confirmThen(`Rotate ${key.name}? Its current secret stops working.`,
      () => rotateKey(key.name).catch(pageError));
    const revoke = el("button", { type: "button", "data-testid": "revoke-key" }, "Revoke");
    revoke.onclick = () => confirmThen(`Revoke ${key.name}? This cannot be undone.`,
      () => revokeKey(key.name).catch(pageError));
    actions.append(rotate, revoke);
    return el("tr", { "data-testid": "key-row" },
      el("td", {}, key.name), el("td", {}, key.prefix + "…"), el("td", {}, key.scopes.join(" ")),
      el("td", {}, key.models.join(", ") || "every model"), el("td", {}, limitsText(key.limits)),
      el("td", {}, key.status), el("td", {}, key.expires_at || "never"),
      el("td", {}, key.last_used_at || "never"), actions);
  });
  $("key-rows").replaceChildren(...rows);
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
    models: $("create-key-models").value.split(",").map((m) => m.trim()).filter(Boolean),
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

async function loadUsage() {
  const since = $("usage-since").value;
  const by = $("usage-by").value;
  const [groups, days] = await Promise.all([
    call("GET", `/admin/usage?by=${by}&since=${since}`),
    call("GET", `/admin/usage?by=day&since=${since}`),
  ]);
  const sum = (field) => groups.reduce((total, g) => total + g[field], 0);
  $("usage-requests").textContent = sum("requests");
  $("usage-errors").textContent = sum("errors");
  $("usage-prompt").textContent = sum("prompt_tokens");
  $("usage-completion").textContent = sum("completion_tokens");
  $("usage-group").textContent = by[0].toUpperCase() + by.slice(1);
  $("usage-rows").replaceChildren(...groups.map((g) => el("tr", {},
    el("td", {}, g.group), el("td", {}, String(g.requests)), el("td", {}, String(g.errors)),
    el("td", {}, String(g.prompt_tokens)), el("td", {}, String(g.completion_tokens)))));
  drawChart(days.slice().sort((a, b) => a.group.localeCompare(b.group)));
}

function drawChart(days) {
  const svg = $("usage-chart");
  const ns = "http://www.w3.org/2000/svg";
  const most = Math.max(1, ...days.map((d) => d.requests));
  const width = Math.min(600 / Math.max(days.length, 1), 60);
  const bars = days.map((day, i) => {
    const height = Math.round((day.requests / most) * 130);
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", String(i * width + 2));
    bar.setAttribute("y", String(140 - height));
    bar.setAttribute("width", String(Math.max(width - 4, 1)));
    bar.setAttribute("height", String(height));
    const title = document.createElementNS(ns, "title");
    title.textContent = `${day.group}: ${day.requests} requests, ${day.total_tokens} tokens`;
    bar.append(title);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", String(i * width + 2));
    label.setAttribute("y", "155");
    label.textContent = day.group.slice(5);
    return [bar, label];
  }).flat();
  svg.replaceChildren(...bars);
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

// ---- start

document.addEventListener("DOMContentLoaded", async () => {
  const limits = $("limits");
  for (const name of LIMITS) {
    limits.append(el("label", {}, name + " ",
      el("input", { id: `limit-${name}`, type: "number", min: "1", step: "1" })));
  }
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
  $("usage-since").onchange = () => loadUsage().catch(pageError);
  $("usage-by").onchange = () => loadUsage().catch(pageError);
  try {
    loggedIn(await call("GET", "/ui/session"));
  } catch {
    showLogin("");
  }
});
