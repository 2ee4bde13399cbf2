// The aigw console: reads GET /admin/v1/status every second with the admin key the
// operator logged in with, and turns two reads into rates and latency quantiles. Every
// value is set as text (never parsed as HTML), and the page loads nothing from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "aigw-admin-key";
const COLORS = ["#3b6fd8", "#d8573b", "#1b7f3b", "#8e44ad", "#b26a00", "#16a2b8"];
let prev = null;
let timer = null;
const series = new Map(); // alias -> requests/s, last 60 reads

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// Fills `table` with a header row and rows of cells: a cell is a value, or an element.
function fill(table, head, rows, rowAttr) {
  table.replaceChildren();
  const tr = el("tr");
  head.forEach((h) => tr.appendChild(el("th", h)));
  table.appendChild(tr);
  if (rows.length === 0) {
    const r = el("tr");
    const td = el("td", "none");
    td.colSpan = head.length;
    r.appendChild(td);
    table.appendChild(r);
    return;
  }
  rows.forEach((cells, i) => {
    const r = el("tr");
    if (rowAttr) Object.entries(rowAttr(i)).forEach(([k, v]) => r.setAttribute(k, v));
    cells.forEach((c) => {
      if (c instanceof Node) {
        const td = el("td");
        td.appendChild(c);
        r.appendChild(td);
      } else {
        r.appendChild(el("td", c === null || c === undefined ? "-" : c, typeof c === "number" ? "num" : ""));
      }
    });
    table.appendChild(r);
  });
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY) } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = body;
  }
  const r = await fetch("/admin/v1/" + path, opts);
  let json = null;
  try { json = await r.json(); } catch (_) { /* an empty or non-JSON answer */ }
  return { status: r.status, json };
}

const round = (x, d = 2) => (Number.isFinite(x) ? Number(x.toFixed(d)) : null);
// Dollars with enough digits to see a budget under a cent: four decimals from a cent up,
// three significant digits below (0.0000150, not 0 beside "used 100%").
const usd = (x) => {
  if (!Number.isFinite(x)) return null;
  if (x === 0 || Math.abs(x) >= 0.01) return round(x, 4);
  return x.toLocaleString("en-US", { maximumSignificantDigits: 3, maximumFractionDigits: 20 });
};

// The q-quantile of the requests between two reads of a cumulative histogram.
function quantile(now, before, q) {
  if (!now) return null;
  const b0 = before ? before.buckets : now.buckets.map(([le]) => [le, 0]);
  const total = now.count - (before ? before.count : 0);
  if (total <= 0) return null;
  let lastLe = 0, lastCum = 0;
  for (let i = 0; i < now.buckets.length; i++) {
    const [le, cum] = now.buckets[i];
    const c = cum - (b0[i] ? b0[i][1] : 0);
    if (c >= q * total) {
      const inBucket = c - lastCum;
      const frac = inBucket > 0 ? (q * total - lastCum) / inBucket : 1;
      return lastLe + (le - lastLe) * frac;
    }
    lastLe = le;
    lastCum = c;
  }
  return lastLe; // beyond the largest finite bucket
}

function rate(now, before, field, dt) {
  if (!before || dt <= 0) return null;
  return round(((now[field] || 0) - (before[field] || 0)) / dt);
}

function renderTraffic(s, dt) {
  const models = s.traffic.models || {};
  const before = prev ? prev.traffic.models || {} : {};
  const lat = s.traffic.latency || {};
  const latBefore = prev ? prev.traffic.latency || {} : {};
  const names = Object.keys(models);
  fill($("traffic"), ["alias", "req/s", "errors/s", "p50 ms", "p99 ms", "tokens/s", "requests", "errors", "refused", "cost USD"],
    names.map((m) => {
      const t = models[m], b = before[m];
      const p50 = quantile(lat[m], latBefore[m], 0.5), p99 = quantile(lat[m], latBefore[m], 0.99);
      const tok = b ? round((t.input_tokens + t.output_tokens - b.input_tokens - b.output_tokens) / dt) : null;
      return [m, rate(t, b, "requests", dt), rate(t, b, "errors", dt), p50 === null ? null : round(p50 * 1000, 1),
        p99 === null ? null : round(p99 * 1000, 1), tok, t.requests, t.errors, t.refused, usd(t.cost_usd)];
    }), (i) => ({ "data-model": names[i] }));
  const owners = s.traffic.owners || {};
  const ownersBefore = prev ? prev.traffic.owners || {} : {};
  fill($("owners"), ["owner", "req/s", "errors/s", "requests", "errors", "refused", "input tokens", "output tokens", "cost USD"],
    Object.entries(owners).map(([o, t]) => [o, rate(t, ownersBefore[o], "requests", dt), rate(t, ownersBefore[o], "errors", dt),
      t.requests, t.errors, t.refused, t.input_tokens, t.output_tokens, usd(t.cost_usd)]));
  names.forEach((m) => {
    const r = rate(models[m], before[m], "requests", dt);
    if (!series.has(m)) series.set(m, []);
    const pts = series.get(m);
    pts.push(r === null ? 0 : r);
    if (pts.length > 60) pts.shift();
  });
  drawChart();
}

function drawChart() {
  const c = $("chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const all = [...series.values()].flat();
  const max = Math.max(1, ...all);
  g.fillStyle = "#888";
  g.font = "11px sans-serif";
  g.fillText(round(max, 1) + " req/s", 4, 12);
  const legend = $("legend");
  legend.replaceChildren();
  [...series.entries()].forEach(([m, pts], i) => {
    const color = COLORS[i % COLORS.length];
    g.strokeStyle = color;
    g.beginPath();
    pts.forEach((v, j) => {
      const x = c.width - (pts.length - 1 - j) * (c.width / 59);
      const y = c.height - 4 - (v / max) * (c.height - 20);
      j === 0 ? g.moveTo(x, y) : g.lineTo(x, y);
    });
    g.stroke();
    const l = el("span", "■ " + m);
    l.style.color = color;
    legend.appendChild(l);
  });
}

function renderRoutes(s) {
  const rows = [], attrs = [];
  s.routes.forEach((r) => r.targets.forEach((t) => {
    const state = t.cooldown_s !== null && t.cooldown_s !== undefined
      ? el("span", "cooling " + Math.ceil(t.cooldown_s) + "s", "warn") : el("span", "ready", "ok");
    const replicas = t.replicas.map((p) => p.addr + " " +
      (p.ejected_s ? "ejected " + Math.ceil(p.ejected_s) + "s" : p.healthy ? "healthy" : "unhealthy")).join("; ");
    rows.push([r.model + (r.multi ? " (routing)" : ""), t.target, t.provider, t.upstream_model, t.priority, t.weight, state, t.failures, replicas]);
    attrs.push({ "data-model": r.model, "data-target": t.target });
  }));
  fill($("routes"), ["alias", "target", "provider", "upstream model", "priority", "weight", "state", "failures in a row", "replicas"], rows, (i) => attrs[i]);
}

function renderSpend(s) {
  fill($("spend"), ["budget", "owner", "period", "used", "spent USD", "limit USD", "remaining USD", "resets at"],
    s.spend.map((b) => {
      const used = b.limit_usd > 0 ? Math.min(1, b.spent_usd / b.limit_usd) : 1;
      const bar = el("span");
      const fillBar = el("span", null, used >= 1 ? "bar full" : "bar");
      fillBar.style.width = Math.round(used * 100) + "px";
      bar.appendChild(fillBar);
      bar.appendChild(el("span", " " + Math.round(used * 100) + "%"));
      return [b.budget, b.owner, b.period, bar, usd(b.spent_usd), usd(b.limit_usd), usd(b.remaining_usd), b.resets_at || "never"];
    }));
}

function renderCallers(s) {
  fill($("keys"), ["name", "owner", "models", "expires", "state", "rate limit", "budget"],
    s.keys.map((k) => [k.name, k.owner, k.models ? k.models.join(", ") : "all", k.expires_at || "never",
      k.disabled ? el("span", "disabled", "warn") : k.active ? el("span", "active", "ok") : el("span", "expired", "warn"),
      k.rate_limit, k.budget]));
  fill($("jwt"), ["name", "issuer", "keys", "keys loaded", "owner claim", "models claim", "models", "rate limit", "budget"],
    s.jwt.map((j) => [j.name, j.issuer, j.keys, j.keys_loaded, j.owner_claim, j.models_claim,
      j.models ? j.models.join(", ") : "all", j.rate_limit, j.budget]));
}

function renderMcp(s) {
  fill($("mcp-servers"), ["MCP server", "url", "timeout ms", "tools allowed"],
    (s.mcp_servers || []).map((m) => [m.name, m.url, m.timeout_ms, m.tools ? m.tools.join(", ") : "all"]));
  fill($("mcp-calls"), ["server", "tool", "outcome", "calls"],
    (s.mcp_tool_calls || []).map((c) => [c.server || "(unknown tool)", c.tool, c.outcome, c.value]));
}

function renderPolicies(s) {
  fill($("guardrails"), ["guardrail", "action", "hits"], s.guardrail_hits.map((g) => [g.guardrail, g.action, g.value]));
  const byModel = {};
  s.cache.forEach((c) => { (byModel[c.model] = byModel[c.model] || {})[c.result] = c.value; });
  fill($("cache"), ["cached alias", "hits", "misses", "bypassed", "hit ratio"],
    Object.entries(byModel).map(([m, r]) => {
      const hit = r.hit || 0, miss = r.miss || 0;
      return [m, hit, miss, r.bypass || 0, hit + miss > 0 ? round(hit / (hit + miss), 3) : null];
    }));
}

function render(s) {
  const c = s.config;
  $("config-line").textContent = `${c.source} ${c.path} · revision ${c.revision} · ${c.summary} · in flight ${s.inflight}`;
  $("updated").textContent = "updated " + new Date(s.time_ms).toLocaleTimeString();
  const dt = prev ? (s.time_ms - prev.time_ms) / 1000 : 0;
  renderTraffic(s, dt);
  renderRoutes(s);
  renderSpend(s);
  renderCallers(s);
  renderMcp(s);
  renderPolicies(s);
  $("edit-readonly").hidden = c.editable;
  $("edit-form").hidden = !c.editable;
  prev = s;
}

async function poll() {
  try {
    const r = await api("GET", "status");
    if (r.status === 401) return logout("The admin key was refused.");
    if (r.status === 200) render(r.json);
  } catch (e) {
    $("updated").textContent = "gateway unreachable";
  }
}

function start() {
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  poll();
  timer = setInterval(poll, 1000);
}

function logout(message) {
  clearInterval(timer);
  sessionStorage.removeItem(KEY);
  prev = null;
  series.clear();
  $("console").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function login(ev) {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("login-key").value);
  const r = await api("GET", "status").catch(() => ({ status: 0 }));
  $("login-key").value = "";
  if (r.status === 200) {
    $("login-error").textContent = "";
    start();
  } else {
    logout(r.status === 401 ? "That is not an admin key of this gateway." : "The gateway did not answer (" + r.status + ").");
  }
}

function showResult(r, what) {
  const errors = $("edit-errors");
  errors.replaceChildren();
  if (r.status >= 200 && r.status < 300) {
    $("edit-result").textContent = what + " (" + r.status + ")";
    $("edit-result").className = "ok";
    return;
  }
  $("edit-result").textContent = (r.json && r.json.error && r.json.error.message) || "refused (" + r.status + ")";
  $("edit-result").className = "error";
  ((r.json && r.json.error && r.json.error.errors) || []).forEach((e) => errors.appendChild(el("li", e.path + ": " + e.message)));
}

function target() {
  return $("edit-kind").value + "/" + encodeURIComponent($("edit-name").value.trim());
}

async function save(ev) {
  ev.preventDefault();
  let body = $("edit-body").value;
  try {
    JSON.parse(body);
  } catch (e) {
    return showResult({ status: 400, json: { error: { message: "Not JSON: " + e.message } } });
  }
  showResult(await api("PUT", target(), body), "saved");
}

async function load() {
  const r = await api("GET", target());
  if (r.status === 200) $("edit-body").value = JSON.stringify(r.json, null, 2);
  showResult(r, "loaded");
}

async function remove() {
  showResult(await api("DELETE", target()), "deleted");
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout());
  $("edit-form").addEventListener("submit", save);
  $("edit-load").addEventListener("click", load);
  $("edit-delete").addEventListener("click", remove);
  if (sessionStorage.getItem(KEY)) start();
});
