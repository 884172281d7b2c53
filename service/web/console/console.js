// The relay console: plain JS, no build step. The admin token lives in sessionStorage and goes
// to the admin API as a bearer token (no cookies). Every value from Redis is shown as text.
"use strict";

const TOKEN_KEY = "relay.adminToken";
const REFRESH_MS = 3000;
const REFRESH_TIMEOUT_MS = 10000; // a refresh with no answer by then counts as failed
const HISTORY = 100; // samples kept for the deliveries chart (5 minutes at 3 s)
const PAGE = 20;
// Items a bulk replay takes a request: each answers quickly, and progress shows between them.
let bulkBatch = 500; // `let`: a browser test lowers it, to see several batches
const main = document.getElementById("main");
// view: bumped by every route(), so an answer that comes after the page was left is not shown.
// session: bumped by every sign-in page, so a bulk replay stops when its operator signs out.
// status: the last /status that answered, shown (marked stale) while refreshes fail.
const state = { timer: null, view: 0, session: 0, history: {}, status: null, dlqOffset: 0, filters: {}, replaying: false };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "onclick" || name === "onsubmit") node[name] = value;
    else node.setAttribute(name, value);
  }
  for (const child of children.flat(Infinity)) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "-" : String(child)));
  }
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function destination() { return document.getElementById("destination").value || ""; }
// Times come as ISO 8601 in UTC ("2026-11-29T20:10:00.123Z"): shown to the second.
function when(iso) { return iso ? `${String(iso).slice(0, 19)}Z` : "-"; }

// Throws an Error with .code (the API's error code, else the HTTP status, else "no_answer") and
// .status (the HTTP status; none when nothing answered). `timeout` (ms): give up waiting then.
async function api(method, path, body, timeout) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const signal = timeout ? AbortSignal.timeout(timeout) : undefined;
  let answer;
  try {
    answer = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (failure) {
    const error = new Error(failure.name === "TimeoutError" ? `no answer within ${timeout / 1000} s` : failure.message);
    error.code = "no_answer";
    throw error;
  }
  const data = answer.status === 204 ? {} : await answer.json().catch(() => ({}));
  if (!answer.ok) {
    const code = (data.error && data.error.code) || String(answer.status);
    const error = new Error((data.error && data.error.message) || `HTTP ${answer.status} ${answer.statusText}`.trim());
    error.code = code;
    error.status = answer.status;
    error.details = data.error && data.error.details;
    throw error;
  }
  return data;
}

// An API error for people: its message, then the field messages of an invalid request.
function explain(error) {
  const fields = Object.entries(error.details || {}).map(([name, v]) => `${name}: ${Array.isArray(v) ? v.join(" ") : JSON.stringify(v)}`);
  return fields.length ? `${error.message} (${fields.join("; ")})` : error.message;
}

function withDestination(path) {
  const sep = path.includes("?") ? "&" : "?";
  return destination() ? `${path}${sep}destination=${encodeURIComponent(destination())}` : path;
}

function confirmAction(text) {
  const box = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  box.hidden = false;
  return new Promise((resolve) => {
    document.getElementById("confirm-yes").onclick = () => { box.hidden = true; resolve(true); };
    document.getElementById("confirm-no").onclick = () => { box.hidden = true; resolve(false); };
  });
}

function show(...nodes) { main.replaceChildren(...nodes.flat(Infinity).map((n) => (n instanceof Node ? n : document.createTextNode(String(n))))); }

// Leave the current page: no refresh runs on, no late answer is shown.
function leave() { clearTimeout(state.timer); state.view += 1; }

// Sign-in, and the page shown when the admin API is off.
function loginPage(message) {
  leave();
  state.session += 1;
  document.getElementById("nav").hidden = true;
  const input = el("input", {
    id: "token", type: "password", placeholder: "RELAY_ADMIN_TOKEN", size: "40", autocomplete: "off",
  });
  const form = el("form", { id: "login-form", onsubmit: (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value);
    start();
  } }, input, " ", el("button", { id: "login", type: "submit" }, "Sign in"));
  show(el("h2", {}, "Sign in"), el("p", {}, "The admin token is kept in this tab only (sessionStorage)."), form,
    message ? el("p", { id: "login-error", class: "error" }, message) : "");
}

function disabledPage() {
  leave();
  document.getElementById("nav").hidden = true;
  show(el("div", { id: "disabled", class: "notice" }, el("h2", {}, "The admin API is disabled"),
    el("p", {}, "This relay has no RELAY_ADMIN_TOKEN set, so the console cannot show or change anything. "
      + "Set RELAY_ADMIN_TOKEN for `relay web` and reload this page.")));
}

async function start() {
  try {
    await api("GET", "/admin/dlq?limit=1");
  } catch (error) {
    if (error.code === "admin_disabled") return disabledPage();
    if (error.code === "unauthorized") return loginPage(token() ? "That token was refused." : "");
    return loginPage(`The relay did not answer: ${error.message}`);
  }
  // Without /status (Redis down) the list waits for the overview's first refresh that answers.
  await api("GET", "/status").then(listDestinations, () => {});
  document.getElementById("nav").hidden = false;
  route();
}

function listDestinations(status) {
  const select = document.getElementById("destination");
  if (!select.options.length) {
    for (const name of Object.keys(status.destinations)) select.append(el("option", { value: name }, name));
  }
}

// Overview: every destination, refreshed every few seconds.
function number(value) { return value == null ? "-" : value; }

function dl(pairs) { return el("dl", {}, pairs.map(([k, v, field]) => [el("dt", {}, k), el("dd", { "data-field": field || k }, number(v))])); }

function chart(name) {
  const points = state.history[name] || [];
  const deltas = points.slice(1).map((p, i) => Math.max(0, p.delivered - points[i].delivered));
  const width = 300, height = 60, top = Math.max(1, ...deltas);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("data-samples", String(deltas.length));
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  const step = width / Math.max(1, HISTORY - 1);
  line.setAttribute("points", deltas.map((d, i) => `${i * step},${height - 2 - (d / top) * (height - 4)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#1976d2");
  svg.append(line);
  return el("div", { class: "card" }, el("h3", {}, `Deliveries per ${REFRESH_MS / 1000} s (max ${top})`), svg);
}

function destinationCard(name, d, stale) {
  const lanes = Object.entries(d.lanes).map(([lane, l]) => [`${lane} depth / pending`, `${l.depth} / ${l.pending}`, `lane-${lane}`]);
  const reasons = Object.entries(d.dlq.by_reason).map(([reason, count]) => [reason, count, `reason-${reason}`]);
  return el("section", { class: stale ? "destination stale" : "destination", "data-name": name },
    el("h2", {}, name, stale ? el("span", { class: "stale-mark" }, ` (stale: as of ${when(stale)})`) : ""), el("div", { class: "cards" },
    el("div", { class: "card" }, el("h3", {}, "Ledger"), dl(Object.entries(d.ledger))),
    el("div", { class: "card" }, el("h3", {}, "Lanes"), dl(lanes)),
    el("div", { class: "card" }, el("h3", {}, "Dead letters"), dl([["total", d.dlq.size, "dlq-size"], ...reasons,
      ["dropped (retention)", d.dlq.dropped_by_retention, "dlq-dropped"]])),
    el("div", { class: "card" }, el("h3", {}, "Limiter"), dl([["per second", d.limiter.rate_limit_per_second],
      ["in flight", d.limiter.in_flight, "limiter-in-flight"], ["paused until", when(d.limiter.paused_until), "limiter-paused-until"],
      ["last 429", when(d.limiter.last_429_at), "limiter-last-429"]])),
    el("div", { class: "card" }, el("h3", {}, "Workers alive"), dl(Object.entries(d.workers).map(([l, n]) => [l, n, `workers-${l}`])),
      el("h3", {}, "Last delivery"), el("span", { "data-field": "last-delivery" }, when(d.last_delivery_at))),
    chart(name)));
}

// A refresh that fails never passes silently: the page says when and why, keeps the last figures
// marked stale, and the next refresh that answers clears it. Throws only when signed out (401).
async function overview(view) {
  let status;
  try {
    status = await api("GET", "/status", undefined, REFRESH_TIMEOUT_MS);
  } catch (error) {
    if (error.code === "unauthorized") throw error;
    if (view === state.view) showOverview(state.status, refreshFailure(error));
    return;
  }
  if (view !== state.view) return;
  listDestinations(status);
  for (const [name, d] of Object.entries(status.destinations)) {
    const history = (state.history[name] = state.history[name] || []);
    history.push({ at: status.time_unix, delivered: d.ledger.delivered });
    if (history.length > HISTORY) history.shift();
  }
  state.status = status;
  showOverview(status, "");
}

// As in: "Refresh failed at <time>: redis is not reachable; retry later (HTTP 503 redis_unavailable); showing data from <time>."
function refreshFailure(error) {
  const why = error.status ? `${explain(error)} (HTTP ${error.status}${error.code === String(error.status) ? "" : ` ${error.code}`})`
    : `the relay did not answer (${error.message})`;
  const data = state.status ? `showing data from ${when(state.status.time)}` : "no data to show yet";
  return `Refresh failed at ${when(new Date().toISOString())}: ${why}; ${data}.`;
}

function showOverview(status, failure) {
  const stale = failure && status ? status.time : null;
  const every = `every ${REFRESH_MS / 1000} s`;
  show(el("h1", {}, "Overview"), failure ? el("p", { id: "refresh-error", class: "error", role: "alert" }, failure) : "",
    status ? el("p", { id: "refreshed", class: stale ? "stale" : "" },
      stale ? `Last refreshed ${when(status.time)}; retrying ${every}.` : `Refreshed ${when(status.time)}, ${every}.`) : "",
    status ? Object.entries(status.destinations).map(([name, d]) => destinationCard(name, d, stale)) : "");
}

function refreshLater(view) {
  state.timer = setTimeout(async () => {
    try {
      await overview(view);
    } catch (error) {
      return view === state.view ? failed(error) : undefined;
    }
    if (view === state.view) refreshLater(view);
  }, REFRESH_MS);
}

// Dead letters: filters, paging, bulk replay (dry run first).
// The filters as the form shows them (empty fields left out): what Filter applies and what
// bulk replay acts on, so the list, the dry run's count and the replay always agree.
function formFilters() {
  const filters = {};
  for (const input of document.querySelectorAll("form.filters input")) if (input.value) filters[input.name] = input.value;
  return filters;
}

function sameFilters(a, b) {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => a[k] === b[k]);
}

// As in: reason="invalid_payload", user_id="u2" (values quoted, so a stray space shows).
function describeFilters(filters) {
  return Object.entries(filters).map(([name, value]) => `${name}=${JSON.stringify(value)}`).join(", ");
}

function filterForm() {
  const field = (id, name, placeholder) => el("label", {}, `${name} `, el("input", { id, name, placeholder, value: state.filters[name] || "" }));
  return el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    state.filters = formFilters();
    state.dlqOffset = 0;
    route();
  } }, field("f-reason", "reason", "retries_exhausted"), field("f-event-type", "event_type", "invoice.paid"),
    field("f-user", "user_id", "user id"), el("button", { id: "f-apply", type: "submit" }, "Filter"),
    el("button", { id: "bulk-replay", type: "button", onclick: bulkReplay }, "Replay all matching…"));
}

async function bulkReplay() {
  if (state.replaying) {  // one at a time: two would count each other's items as gone
    document.getElementById("bulk-error").textContent = "A bulk replay is under way: wait for it to end.";
    return;
  }
  // Act on what the form shows, never on filters applied earlier: apply them first, so the
  // list below the dialog is the one the replay will take.
  const shown = formFilters();
  if (!sameFilters(shown, state.filters)) {
    state.filters = shown;
    state.dlqOffset = 0;
    await route();
    if (!document.getElementById("dlq-table")) return; // the list failed to load: route() shows why
  }
  const filters = { ...state.filters };
  const body = Object.keys(filters).length ? filters : { all: true };
  const where = destination() ? ` at ${destination()}` : "";
  // The replay goes on while the operator looks at other pages: what it did, or what stopped it,
  // waits for the dead letters page (the flash) when it is not the page shown.
  const onPage = () => document.getElementById("dlq-table") !== null;
  const error = (message) => {
    if (onPage()) document.getElementById("bulk-error").textContent = message;
    else state.flash = [state.flash, message].filter(Boolean).join(" ");
  };
  try {
    const dry = await api("POST", withDestination("/admin/dlq/replay"), { ...body, dry_run: true });
    const text = body.all
      ? `Replay ALL dead letters${where} (no filter): ${dry.matched} item(s)?`
      : `Replay ${dry.matched} dead letter(s)${where} matching ${describeFilters(filters)}?`;
    if (!(await confirmAction(text))) return;
    state.flash = await replayInBatches(body, dry.matched);
  } catch (failure) {
    if (failure.code === "signed_out") return void (state.flash = failure.partial || "");
    if (failure.code === "unauthorized") return loginPage("Signed out: the token was refused.");
    if (failure.partial) {
      state.flash = failure.partial;
      if (onPage()) await route();
      return error(`Bulk replay stopped: ${explain(failure)}. What it replayed stays replayed; replay all matching again to go on.`);
    }
    return error(`Bulk replay failed: ${explain(failure)}`);
  }
  if (onPage()) route();
}

// A bulk replay as short requests joined by the API's cursor, its progress shown between them.
// Returns what it did, for the flash; an error after the first batch carries that as `.partial`.
// Every batch goes to the destination the replay began at; signing out stops it before the next
// (an error coded "signed_out").
async function replayInBatches(body, expected) {
  const outcomes = {};
  let cursor = null;
  let taken = 0;
  const path = withDestination("/admin/dlq/replay");
  const session = state.session;
  const progress = (text) => { const node = document.getElementById("bulk-progress"); if (node) node.textContent = text; };
  state.replaying = true;
  try {
    do {
      if (state.session !== session) {
        const stop = new Error("signed out");
        stop.code = "signed_out";
        throw stop;
      }
      progress(`Replaying: ${taken} of ${expected} done…`);
      const done = await api("POST", path, { ...body, batch: bulkBatch, ...(cursor ? { cursor } : {}) });
      for (const [outcome, count] of Object.entries(done.outcomes)) outcomes[outcome] = (outcomes[outcome] || 0) + count;
      taken += done.selected;
      cursor = done.cursor;
    } while (cursor);
  } catch (failure) {
    const why = failure.code === "signed_out" ? "you signed out" : "it stopped";
    if (taken) failure.partial = `Replayed ${taken} before ${why}: ${JSON.stringify(outcomes)}`;
    throw failure;
  } finally {
    state.replaying = false;
    progress("");
  }
  return `Replayed: ${JSON.stringify(outcomes)}`;
}

async function dlqPage() {
  const query = new URLSearchParams({ ...state.filters, offset: state.dlqOffset, limit: PAGE });
  let page;
  try {
    page = await api("GET", withDestination(`/admin/dlq?${query}`));
  } catch (error) {
    if (error.code === "unauthorized") throw error;
    // Keep the form, so a filter the API refuses can be corrected here.
    return show(el("h1", {}, "Dead letters"), filterForm(),
      el("p", { id: "bulk-error", class: "error" }, `The list could not be loaded: ${explain(error)}`));
  }
  const rows = page.items.map((item) => el("tr", { "data-id": item.id },
    el("td", { class: "id" }, el("a", { href: `#/dlq/${encodeURIComponent(item.id)}` }, item.id)),
    el("td", {}, item.reason), el("td", {}, item.event_type), el("td", {}, item.user_id),
    el("td", {}, item.attempts), el("td", {}, when(item.last_failure_at)), el("td", {}, item.last_status), el("td", {}, item.message)));
  const move = (delta) => () => { state.dlqOffset = Math.max(0, state.dlqOffset + delta); route(); };
  const last = Math.min(page.total, page.offset + page.items.length);
  show(el("h1", {}, "Dead letters"), filterForm(), el("p", { id: "bulk-error", class: "error" }, ""),
    el("p", { id: "bulk-progress", role: "status" }, ""),
    state.flash ? el("p", { id: "flash" }, state.flash) : "",
    el("table", { id: "dlq-table" }, el("thead", {}, el("tr", {}, ["id", "reason", "event type", "user", "tries", "last failure", "status", "message"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
    el("p", {}, el("span", { id: "dlq-total" }, `${page.items.length ? page.offset + 1 : 0}–${last} of ${page.total}`), " ",
      el("button", { id: "prev", type: "button", onclick: move(-PAGE), ...(page.offset ? {} : { disabled: "" }) }, "Previous"), " ",
      el("button", { id: "next", type: "button", onclick: move(PAGE), ...(last < page.total ? {} : { disabled: "" }) }, "Next")));
  state.flash = "";
}

async function itemPage(id) {
  let item;
  try {
    item = await api("GET", withDestination(`/admin/dlq/${encodeURIComponent(id)}`));
  } catch (error) {
    return show(el("h1", {}, "Dead letter"), el("p", { class: "error" }, `${id}: ${error.message}`), el("a", { href: "#/dlq" }, "Back to the list"));
  }
  const act = (verb, method, path) => async () => {
    if (!(await confirmAction(`${verb} ${id}?`))) return;
    try {
      await api(method, withDestination(path));
      state.flash = `${verb}: ${id}`;
      location.hash = "#/dlq";
    } catch (error) {
      document.getElementById("item-error").textContent = `${verb} failed: ${error.message}`;
    }
  };
  const path = `/admin/dlq/${encodeURIComponent(id)}`;
  show(el("h1", {}, "Dead letter ", el("code", {}, id)),
    el("p", {}, el("button", { id: "replay", type: "button", onclick: act("Replay", "POST", `${path}/replay`) }, "Replay"), " ",
      el("button", { id: "delete", type: "button", onclick: act("Delete", "DELETE", path) }, "Delete"), " ",
      item.user_id ? el("a", { href: `#/trace/${encodeURIComponent(item.user_id)}` }, "User's trace") : ""),
    el("p", { id: "item-error", class: "error" }, ""),
    el("pre", { id: "item-json" }, JSON.stringify(item, null, 2)));
}

// A user's trace.
async function tracePage(user) {
  const input = el("input", { id: "trace-user", placeholder: "user id", value: user || "" });
  const form = el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    const target = `#/trace/${encodeURIComponent(input.value)}`;
    if (location.hash === target) route(); // the same user again (after a failure): no hashchange comes
    else location.hash = target;
  } }, input, el("button", { id: "trace-go", type: "submit" }, "Show trace"));
  if (!user) return show(el("h1", {}, "User trace"), form);
  let trace;
  try {
    trace = await api("GET", withDestination(`/admin/users/${encodeURIComponent(user)}/trace`));
  } catch (error) {
    if (error.code === "unauthorized") throw error;
    // Keep the form, so the user id can be corrected or tried again here.
    return show(el("h1", {}, "User trace"), form,
      el("p", { id: "trace-error", class: "error" }, `The trace of ${JSON.stringify(user)} could not be loaded: ${explain(error)}`));
  }
  const sent = (e) => [...Object.entries(e.attributes || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`),
    ...(e.tags || []).map((t) => `+tag:${t}`), ...(e.dropped || []).map((d) => `dropped ${d.name}: ${d.reason}`)].join(" ");
  const rows = trace.entries.map((e) => el("tr", { class: e.kind },
    el("td", {}, when(e.at)), el("td", {}, e.kind === "delivery" ? "delivered" : "dead letter"),
    el("td", {}, e.kind === "delivery" ? e.endpoint : e.reason), el("td", {}, e.status ?? ""),
    el("td", {}, (e.event_ids || []).join(", ")),
    el("td", {}, e.kind === "delivery" ? sent(e) : el("a", { href: `#/dlq/${encodeURIComponent(e.dead_letter_id)}` }, e.dead_letter_id))));
  show(el("h1", {}, "User trace"), form, el("p", {}, `${trace.entries.length} entries for ${trace.user_id} at ${trace.destination}, newest first.`),
    el("table", { id: "trace-table" }, el("thead", {}, el("tr", {}, ["time", "what", "endpoint / reason", "status", "events", "sent / item"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
}

function failed(error) {
  if (error.code === "unauthorized") return loginPage("Signed out: the token was refused.");
  show(el("p", { class: "error" }, `Error: ${error.message}`));
}

async function route() {
  leave();
  const view = state.view;
  const [, page, arg] = (location.hash || "#/overview").match(/^#\/([^/]*)\/?(.*)$/) || [];
  try {
    if (page === "dlq" && arg) return await itemPage(decodeURIComponent(arg));
    if (page === "dlq") return await dlqPage();
    if (page === "trace") return await tracePage(decodeURIComponent(arg || ""));
    await overview(view);
    if (view === state.view) refreshLater(view);
  } catch (error) {
    if (view === state.view) failed(error);
  }
}

window.addEventListener("hashchange", () => { if (!document.getElementById("nav").hidden) route(); });
document.getElementById("destination").onchange = () => route();
document.getElementById("logout").onclick = () => { sessionStorage.removeItem(TOKEN_KEY); loginPage(""); };
start();
