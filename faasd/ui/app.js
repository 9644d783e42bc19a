// faasd's web UI: the same API faas-cli calls, from the browser. Over TCP the browser
// carries the basic-auth credentials it was asked for on /ui/ to /system/* as well.
"use strict";

const POLL_MS = 2000;
// Samples kept per function for its chart.
const HISTORY = 30;

const $ = (id) => document.getElementById(id);
const history = new Map(); // name → [{activations, invocations, latencyMs}]
let namespace = "openfaas-fn";
let following = null; // AbortController of the followed log

function showError(text) {
  $("error").textContent = text || "";
}

// A request to the API; resolves to the Response, throws with the server's message.
async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (!resp.ok) {
    const text = (await resp.text()).trim();
    throw new Error(`${resp.status}: ${text || resp.statusText}`);
  }
  return resp;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// "key=value" lines into an object; refuses a line without "=".
function pairs(text, what) {
  const out = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const i = line.indexOf("=");
    if (i < 1) throw new Error(`${what}: "${line}" is not key=value`);
    out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

function latencyMs(state) {
  const t = state.lastActivation;
  if (!t || !t.readyNs || !t.requestedNs) return null;
  return (t.readyNs - t.requestedNs) / 1e6;
}

function record(f) {
  const h = history.get(f.name) || [];
  h.push({
    activations: f.state.activations,
    invocations: f.invocationCount,
    latencyMs: latencyMs(f.state),
  });
  while (h.length > HISTORY) h.shift();
  history.set(f.name, h);
  return h;
}

const SVG = "http://www.w3.org/2000/svg";

// Bars: activations since the previous sample; line: the last activation's latency.
function chart(h) {
  const w = 120, ht = 28;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", w);
  svg.setAttribute("height", ht);
  const deltas = h.map((s, i) => (i === 0 ? 0 : Math.max(0, s.activations - h[i - 1].activations)));
  const most = Math.max(1, ...deltas);
  const step = w / HISTORY;
  deltas.forEach((d, i) => {
    if (!d) return;
    const r = document.createElementNS(SVG, "rect");
    const bar = (d / most) * (ht - 2);
    r.setAttribute("x", i * step);
    r.setAttribute("y", ht - bar);
    r.setAttribute("width", Math.max(1, step - 1));
    r.setAttribute("height", bar);
    svg.append(r);
  });
  const lat = h.map((s) => s.latencyMs);
  const slowest = Math.max(0.001, ...lat.filter((x) => x !== null));
  const points = lat
    .map((v, i) => (v === null ? null : `${i * step + step / 2},${ht - 1 - (v / slowest) * (ht - 4)}`))
    .filter((p) => p !== null);
  if (points.length > 1) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
  } else if (points.length === 1) {
    const [x, y] = points[0].split(",");
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", x);
    dot.setAttribute("cy", y);
    dot.setAttribute("r", 2);
    svg.append(dot);
  }
  const last = h[h.length - 1];
  const title = document.createElementNS(SVG, "title");
  title.textContent = `activations ${last.activations}, calls ${last.invocations}` +
    (last.latencyMs === null ? "" : `, last activation ${last.latencyMs.toFixed(1)} ms`);
  svg.append(title);
  return svg;
}

const rows = new Map(); // name → its table row, kept across polls so a click never lands on a replaced one
const cellsOf = new WeakMap(); // row → its cells by what they show

// A row with its cells and buttons, made once per function.
function newRow(name) {
  const cells = {};
  const td = (key, cls) => (cells[key] = el("td", cls ? { class: cls } : {}));
  const tr = el(
    "tr",
    { "data-name": name },
    el("td", {}, name),
    td("state"),
    td("instances"),
    td("address", "addr"),
    td("ports"),
    td("activations", "activations"),
    td("calls", "calls"),
    td("chart"),
    el(
      "td",
      {},
      el("button", { type: "button", class: "invoke", onclick: () => openInvoke(name) }, "Invoke"),
      " ",
      el("button", { type: "button", class: "logs", onclick: () => followLogs(name) }, "Logs"),
      " ",
      el("button", { type: "button", class: "remove", onclick: () => removeFunction(name) }, "Remove"),
    ),
  );
  cellsOf.set(tr, cells);
  return tr;
}

function update(tr, f) {
  const c = cellsOf.get(tr);
  const phase = f.state.phase;
  c.state.textContent = phase;
  c.state.className = `phase-${phase}`;
  c.state.title = f.state.lastError || "";
  c.instances.textContent = `${f.availableReplicas}/${f.replicas}`;
  c.address.textContent = f.address;
  c.ports.textContent = f.ports.map((p) => `${p.port}/${p.protocol}`).join(", ");
  c.activations.textContent = String(f.state.activations);
  c.calls.textContent = String(f.invocationCount);
  c.chart.replaceChildren(chart(record(f)));
}

async function refresh() {
  try {
    const resp = await api("GET", `/system/functions?namespace=${encodeURIComponent(namespace)}`);
    const list = await resp.json();
    list.sort((a, b) => a.name.localeCompare(b.name));
    const names = new Set(list.map((f) => f.name));
    for (const name of [...rows.keys()]) {
      if (!names.has(name)) {
        rows.get(name).remove();
        rows.delete(name);
        history.delete(name);
      }
    }
    const body = $("functions").tBodies[0];
    for (const f of list) {
      let tr = rows.get(f.name);
      if (!tr) {
        tr = newRow(f.name);
        rows.set(f.name, tr);
      }
      update(tr, f);
      body.append(tr); // in name order; moving an element keeps it
    }
    $("no-functions").hidden = list.length > 0;
    showError("");
  } catch (e) {
    showError(`listing functions: ${e.message}`);
  }
}

async function loadNamespaces() {
  try {
    const list = await (await api("GET", "/system/namespaces")).json();
    if (!list.includes(namespace)) list.unshift(namespace);
    $("namespace").replaceChildren(...list.map((n) => el("option", { value: n }, n)));
    $("namespace").value = namespace;
  } catch (e) {
    showError(`listing namespaces: ${e.message}`);
  }
}

async function loadHost() {
  try {
    const info = await (await api("GET", "/system/info")).json();
    $("host").textContent = `faasd ${info.version.release} (${info.arch})`;
  } catch (e) {
    showError(`host info: ${e.message}`);
  }
}

// Invoke.
let invoking = null;

function openInvoke(name) {
  invoking = name;
  $("invoke-name").textContent = name;
  $("invoke-section").hidden = false;
  for (const id of ["invoke-status", "invoke-time", "invoke-answer", "invoke-answer-headers"]) {
    $(id).textContent = "";
  }
  $("invoke-section").scrollIntoView();
}

async function invoke(ev) {
  ev.preventDefault();
  const headers = {};
  for (const raw of $("invoke-headers").value.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const i = line.indexOf(":");
    if (i < 1) {
      $("invoke-status").textContent = `"${line}" is not Name: value`;
      return;
    }
    headers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  const method = $("invoke-method").value;
  const path = $("invoke-path").value.replace(/^\/+/, "");
  const init = { method, headers };
  if (method !== "GET") init.body = $("invoke-body").value;
  const started = performance.now();
  try {
    const target = `/function/${invoking}.${namespace}`;
    const resp = await fetch(path ? `${target}/${path}` : target, init);
    const text = await resp.text();
    $("invoke-status").textContent = `${resp.status} ${resp.statusText}`;
    $("invoke-time").textContent = `${(performance.now() - started).toFixed(1)} ms`;
    $("invoke-answer-headers").textContent = [...resp.headers].map(([k, v]) => `${k}: ${v}`).join("\n");
    $("invoke-answer").textContent = text;
  } catch (e) {
    $("invoke-status").textContent = `failed: ${e.message}`;
  }
}

// Logs, followed until Stop or another function's logs are asked for.
async function followLogs(name) {
  if (following) following.abort();
  following = new AbortController();
  const out = $("logs-output");
  out.textContent = "";
  $("logs-name").textContent = name;
  $("logs-section").hidden = false;
  const q = `name=${encodeURIComponent(name)}&namespace=${encodeURIComponent(namespace)}&tail=100&follow=true`;
  try {
    const resp = await fetch(`/system/logs?${q}`, { signal: following.signal });
    if (!resp.ok) throw new Error(`${resp.status}: ${(await resp.text()).trim()}`);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let partial = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      partial += value;
      const lines = partial.split("\n");
      partial = lines.pop();
      for (const l of lines) {
        if (!l.trim()) continue;
        const line = JSON.parse(l);
        out.append(`${line.timestamp} ${line.instance} ${line.text}\n`);
      }
      out.scrollTop = out.scrollHeight;
    }
  } catch (e) {
    if (e.name !== "AbortError") out.append(`(log ended: ${e.message})\n`);
  }
}

async function removeFunction(name) {
  if (!confirm(`Remove ${name}?`)) return;
  try {
    await api("DELETE", "/system/functions", { functionName: name, namespace });
    await refresh();
  } catch (e) {
    showError(`removing ${name}: ${e.message}`);
  }
}

// Deploy.
function kindChanged() {
  const process = $("deploy-kind").value === "process";
  $("deploy-image-label").hidden = process;
  $("deploy-command-label").hidden = !process;
}

async function deploy(ev) {
  ev.preventDefault();
  const result = $("deploy-result");
  result.className = "";
  result.textContent = "deploying…";
  try {
    const body = {
      service: $("deploy-name").value.trim(),
      namespace,
      labels: pairs($("deploy-labels").value, "labels"),
      annotations: pairs($("deploy-annotations").value, "annotations"),
      envVars: pairs($("deploy-env").value, "environment"),
    };
    if ($("deploy-kind").value === "process") body.envProcess = $("deploy-command").value.trim();
    else body.image = $("deploy-image").value.trim();
    await api("POST", "/system/functions", body);
    result.className = "ok";
    result.textContent = `deployed ${body.service}`;
    await refresh();
  } catch (e) {
    result.className = "bad";
    result.textContent = e.message;
  }
}

// Secrets: names only; values are never read back.
async function loadSecrets() {
  try {
    const list = await (await api("GET", `/system/secrets?namespace=${encodeURIComponent(namespace)}`)).json();
    $("secrets").replaceChildren(
      ...list.map((s) =>
        el(
          "li",
          { "data-secret": s.name },
          s.name,
          el("button", { type: "button", onclick: () => removeSecret(s.name) }, "Remove"),
        ),
      ),
    );
  } catch (e) {
    showError(`listing secrets: ${e.message}`);
  }
}

async function createSecret(ev) {
  ev.preventDefault();
  const result = $("secret-result");
  try {
    const name = $("secret-name").value.trim();
    await api("POST", "/system/secrets", { name, value: $("secret-value").value, namespace });
    result.className = "ok";
    result.textContent = `created ${name}`;
    $("secret-value").value = "";
    await loadSecrets();
  } catch (e) {
    result.className = "bad";
    result.textContent = e.message;
  }
}

async function removeSecret(name) {
  try {
    await api("DELETE", "/system/secrets", { name, namespace });
    await loadSecrets();
  } catch (e) {
    showError(`removing secret ${name}: ${e.message}`);
  }
}

function start() {
  $("namespace").addEventListener("change", () => {
    namespace = $("namespace").value;
    history.clear();
    for (const tr of rows.values()) tr.remove();
    rows.clear();
    refresh();
    loadSecrets();
  });
  $("invoke-form").addEventListener("submit", invoke);
  $("deploy-form").addEventListener("submit", deploy);
  $("deploy-kind").addEventListener("change", kindChanged);
  $("secret-form").addEventListener("submit", createSecret);
  $("logs-stop").addEventListener("click", () => following && following.abort());
  loadHost();
  loadNamespaces();
  refresh();
  loadSecrets();
  setInterval(refresh, POLL_MS);
}

start();
