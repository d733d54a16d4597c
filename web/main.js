// The page's JavaScript: the DOM, files and downloads only. Settings are checked, models
// trained, evaluated and sampled, and the chart drawn by the selfish crate compiled to
// WebAssembly (src/web/).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const autorun = params.get("autorun") === "1";
const form = $("form");
let selfish = null;
let session = null;
let urls = [];
// The browser's own view of the adapter (wgpu is told no names).
let gpu = null;

function say(text, kind = "message") {
  const m = $("message");
  m.textContent = text;
  m.className = kind;
  m.hidden = !text;
}

// Scripts and tests read the outcome here (see README: "?autorun=1").
function finish(result, ok) {
  result.gpu = gpu;
  $("result").textContent = JSON.stringify(result, null, 1);
  if (autorun || params.has("fixture")) $("run-json").open = true;
  document.title = ok ? "selfish: done" : "selfish: error";
}

function settings() {
  const out = {};
  for (const el of form.querySelectorAll("input[name], select[name]")) {
    if (el.type !== "radio" && el.type !== "file") out[el.name] = el.value;
  }
  return out;
}

function fill(values) {
  for (const [k, v] of Object.entries(values)) {
    const el = form.elements.namedItem(k);
    if (el && "value" in el) el.value = v;
  }
}

// The one-line error of the first bad setting, from the same parsers as `selfish train`.
function check() {
  try {
    const loss = selfish.check_settings(JSON.stringify(settings()));
    $("settings-error").textContent = "";
    $("start").disabled = !!session && !$("stop").disabled;
    return loss;
  } catch (e) {
    $("settings-error").textContent = e.message;
    $("start").disabled = true;
    return null;
  }
}

async function probe() {
  if (!window.isSecureContext) {
    return "WebGPU needs a secure page: open it as http://127.0.0.1 (selfish serve) or over https";
  }
  if (!navigator.gpu) {
    return "This browser has no WebGPU: open the page in Chrome or Edge 113 or later " +
      "(on Linux, start Chrome with --enable-unsafe-webgpu --enable-features=Vulkan), " +
      "or enable dom.webgpu.enabled in Firefox's about:config";
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    return "WebGPU found no GPU adapter: turn on hardware acceleration in the browser's " +
      "settings, or update the GPU driver";
  }
  const i = adapter.info || {};
  gpu = { vendor: i.vendor, architecture: i.architecture, device: i.device, description: i.description };
  const name = [i.vendor, i.architecture].filter(Boolean).join(" / ") || "unnamed adapter";
  $("adapter").textContent = `GPU: ${name}${i.description ? ` (${i.description})` : ""}`;
  return null;
}

async function text() {
  if (form.elements.corpus.value === "own") {
    const f = $("text-file").files[0];
    if (!f) throw new Error("pick a text file, or choose tiny Shakespeare");
    return selfish.text_of(new Uint8Array(await f.arrayBuffer()), f.name);
  }
  const r = await fetch("data/tinyshakespeare.txt").catch(() => null);
  if (!r || !r.ok) {
    throw new Error("data/tinyshakespeare.txt is not served with this page: " +
      "serve it with `selfish serve`, or pick your own text file");
  }
  const t = await r.text();
  // ?chars=N: the first N characters only, for quick checks.
  const n = Number(params.get("chars")) || 0;
  return n > 0 ? Array.from(t).slice(0, n).join("") : t;
}

function fmtTime(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${r} s` : `${r} s`;
}

function logLine(text) {
  const l = $("log");
  l.textContent += text + "\n";
  l.scrollTop = l.scrollHeight;
}

function onEvent(json) {
  const e = JSON.parse(json);
  if (e.kind === "progress") {
    $("step").textContent = `${e.step} / ${e.end}`;
    $("eta").textContent = e.step >= e.end ? "done" : fmtTime(e.eta_s);
  } else if (e.kind === "log") {
    $("loss").textContent = e.line.loss.toFixed(4);
    $("tps").textContent = Math.round(e.line.tokens_per_s).toLocaleString("en-US");
    if (lose_at && e.line.step >= lose_at) session.lose_device();
  } else if (e.kind === "say") {
    logLine(e.text);
  } else if (e.kind === "chart") {
    $("chart").innerHTML = e.svg;
  } else if (e.kind === "saved") {
    $("saved").textContent = `step ${e.step}`;
    offerDownloads();
  }
}
// Test hook: destroy the device once step N is logged, as a driver reset would.
const lose_at = Number(params.get("lose_at")) || 0;

function offerDownloads() {
  urls.forEach(URL.revokeObjectURL);
  urls = [];
  const step = session.saved_step();
  const files = [["dl-model", session.model_file()], ["dl-state", session.state_file()], ["dl-best", session.best_file()]];
  for (const [id, bytes] of files) {
    const a = $(id);
    if (!bytes) { a.removeAttribute("href"); continue; }
    const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
    urls.push(url);
    a.href = url;
    a.textContent = id === "dl-best" ? `${a.download} (the best validation step)` : `${a.download} (step ${step})`;
  }
  $("downloads").hidden = step == null;
}

const COLUMNS = [
  ["language", "language", (v) => v],
  ["tokens", "tokens", (v) => v.toLocaleString("en-US")],
  ["loss", "loss", (v) => v.toFixed(4)],
  ["ppl", "ppl (T = 1)", (v) => v.toFixed(3)],
  ["best_ppl", "best ppl", (v) => v.toFixed(3)],
  ["best_temperature", "at T", (v) => v.toFixed(2)],
  ["accuracy", "accuracy", (v) => v.toFixed(4)],
  ["recall_at_5", "recall@5", (v) => v.toFixed(4)],
  ["mrr", "MRR", (v) => v.toFixed(4)],
];

function table(el, columns, rows) {
  el.replaceChildren();
  const head = el.insertRow();
  for (const [, title] of columns) {
    const th = document.createElement("th");
    th.textContent = title;
    head.appendChild(th);
  }
  for (const r of rows) {
    const tr = el.insertRow();
    if (r.ok === false) tr.className = "bad";
    for (const [key, , f] of columns) tr.insertCell().textContent = f(r[key]);
  }
}

async function sample() {
  const f = $("sample-form").elements;
  const n = Number(f.tokens.value), t = Number(f.temperature.value), seed = Number(f.seed.value);
  if (!Number.isInteger(n) || n < 1 || !isFinite(t) || !Number.isInteger(seed) || seed < 0) {
    $("sample").textContent = "length and seed must be whole numbers (length at least 1), temperature a number";
    return;
  }
  $("generate").disabled = true;
  try {
    const out = await session.sample(f.prompt.value, n, t, f.alphabet.value, seed);
    $("sample").textContent = f.prompt.value + out;
  } catch (e) {
    $("sample").textContent = e.message;
  } finally {
    $("generate").disabled = false;
  }
}

async function train() {
  if (check() === null) return;
  say("");
  for (const id of ["log", "sample"]) $(id).textContent = "";
  $("results").hidden = true;
  $("downloads").hidden = true;
  $("start").disabled = true;
  let ok = false;
  try {
    const corpus = await text();
    const sf = $("state-file").files[0];
    const state = sf ? new Uint8Array(await sf.arrayBuffer()) : undefined;
    session?.free();
    session = null;
    session = await selfish.open_session(JSON.stringify(settings()), corpus, state, sf ? sf.name : "");
    if (state) offerDownloads();
    $("stop").disabled = false;
    logLine(await session.train(onEvent));
    $("stop").disabled = true;
    say("evaluating on the whole validation split…", "note");
    const rows = JSON.parse(await session.evaluate());
    table($("eval"), COLUMNS, rows);
    $("results").hidden = false;
    say("");
    offerDownloads();
    if (autorun) await sample();
    ok = true;
  } catch (e) {
    const kept = session?.saved_step();
    say(e.message + (kept != null && !e.message.includes("is kept")
      ? ` (the checkpoint of step ${kept} is still downloadable)` : ""), "error");
    if (kept != null) offerDownloads();
  } finally {
    $("stop").disabled = true;
    check();
  }
  finish(session ? JSON.parse(session.result()) : { error: $("message").textContent }, ok);
}

async function fixture() {
  say("checking the gpt-tiny fixture on this GPU…", "note");
  try {
    const get = async (name) => {
      const r = await fetch(`fixtures/gpt-tiny/${name}`);
      if (!r.ok) throw new Error(`fixtures/gpt-tiny/${name} is not served: use \`selfish serve\``);
      return new Uint8Array(await r.arrayBuffer());
    };
    const out = JSON.parse(await selfish.check_fixture(await get("init.safetensors"), await get("expected.safetensors")));
    const bad = out.rows.filter((r) => !r.ok).length;
    $("results").hidden = false;
    table($("eval"), [
      ["op", "quantity", (v) => v], ["shape", "shape", (v) => v],
      ["max_abs_err", "max abs err", (v) => v.toExponential(2)],
      ["max_rel_err", "max rel err", (v) => v.toExponential(2)],
      ["tol", "tolerance", (v) => v.toExponential(0)], ["ok", "ok", (v) => (v ? "ok" : "FAIL")],
    ], out.rows);
    say(`${out.rows.length - bad} of ${out.rows.length} fixture quantities within tolerance`, bad ? "error" : "note");
    finish(out, true);
  } catch (e) {
    say(e.message, "error");
    finish({ error: e.message }, false);
  }
}

async function main() {
  try {
    selfish = await import("./pkg/selfish.js");
    await selfish.default();
  } catch (e) {
    say(`The trainer (pkg/selfish.js) did not load: build it with web/build.sh (${e.message})`, "error");
    document.title = "selfish: error";
    return;
  }
  const missing = await probe().catch((e) => `WebGPU failed: ${e.message}`);
  if (missing) {
    say(missing, "error");
    finish({ error: missing }, false);
    return;
  }
  say("");
  const select = form.elements.config;
  for (const p of JSON.parse(selfish.presets())) {
    select.add(new Option(`${p.name}: ${p.about}`, p.name));
  }
  $("loss-help").textContent = selfish.loss_help();
  fill(JSON.parse(selfish.defaults()));
  fill(Object.fromEntries([...params].filter(([k]) => form.elements.namedItem(k))));
  form.addEventListener("input", check);
  form.addEventListener("submit", (e) => { e.preventDefault(); train(); });
  $("stop").addEventListener("click", () => { session?.stop(); $("stop").disabled = true; logLine("stopping after this step…"); });
  $("sample-form").addEventListener("submit", (e) => { e.preventDefault(); sample(); });
  $("state-file").addEventListener("change", async () => {
    const f = $("state-file").files[0];
    $("state-note").textContent = "";
    if (!f) return;
    try {
      fill(JSON.parse(selfish.state_settings(new Uint8Array(await f.arrayBuffer()), f.name)));
      $("state-note").textContent = "settings taken from the file; Start continues that run";
    } catch (e) {
      $("state-note").textContent = e.message;
      $("state-file").value = "";
    }
    check();
  });
  check();
  document.body.dataset.ready = "1";
  if (params.has("fixture")) fixture();
  else if (autorun) train();
}

main();
