// The xcompile explainer page: onnxruntime-web (WASM; WebGPU where the browser has an adapter) runs each
// explainer of manifest.json on one input. Test hooks: ?example=K (&model=M, &methods=a,b, &ep=wasm|webgpu)
// explains example K on load; window.xcompile.results = {name: {input, relevance, scores, explained_class}}
// (flat arrays); document.body.dataset.state = "done", or "error" with the message in #error.
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { manifest: null, model: 0, input: null, sessions: {}, ep: "wasm" };
// example(k, m): explain example k of model m (default: the current one) and resolve to the results (tests: one
// page load, many inputs)
window.xcompile = { results: {}, manifest: null, ep: null,
                    example: async (k, m) => {
                      if (m !== undefined && m !== state.model) { state.model = m; $("model").value = m; buildModel(); }
                      await setExample(k); await runAll(); return window.xcompile.results;
                    } };

// matplotlib's "bwr": blue (-max) - white (0) - red (+max), linear per channel (xcompile/runtime/render.py)
function bwr(u) {
  const t = Math.max(0, Math.min(1, (u + 1) / 2));
  return [Math.min(1, 2 * t), 1 - Math.abs(2 * t - 1), Math.min(1, 2 - 2 * t)].map((c) => Math.round(255 * c));
}
const css = (rgb) => `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
const fmt = (v) => (v === null || v === undefined || Number.isNaN(v)) ? "n/a"
  : (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0)) ? v.toExponential(2) : v.toFixed(3);

function fail(err) {
  const msg = (err && err.message) ? err.message : String(err);
  $("error").textContent = msg;
  document.body.dataset.state = "error";
  console.error(err);
}

function model() { return state.manifest.models[state.model]; }
function explainersOf(m) { return state.manifest.explainers.filter((e) => e.model === state.model); }
function className(k) {
  const c = model().classes;
  return c && k >= 0 && k < c.length && c[k] !== String(k) ? `${k} (${c[k]})` : String(k);
}

// ---------------------------------------------------------------- inputs
function encodeText(text, tok, length) {
  if (tok.level === "wordpiece") return encodeWordPiece(text, tok, length);
  // the vocabulary's own rule (xcompile/runtime/tokens.py PlainVocabulary.encode): one id per character (or
  // word), unknown -> unk_id, truncated to the input length, padded with pad_id on the right
  const index = new Map(tok.vocab.map((s, i) => [s, i]));
  const t = tok.lowercase ? text.toLowerCase() : text;
  const parts = tok.level === "word" ? t.split(/\s+/).filter((w) => w) : Array.from(t);
  const ids = new Array(length).fill(tok.pad_id ?? 0);
  parts.slice(0, length).forEach((p, i) => {
    const k = index.get(p);
    ids[i] = (k === undefined || k === tok.pad_id || k === tok.unk_id) ? tok.unk_id : k;
  });
  return ids;
}

// A WordPiece tokenizer.json as Hugging Face `tokenizers` encodes it (xcompile/web/wordpiece.py reads the file):
// special added tokens matched verbatim, BertNormalizer, BertPreTokenizer, greedy longest-match WordPiece, the
// [CLS] $A [SEP] template, truncated / padded to the input length. tests/serving/test_web_wordpiece.py compares it
// with `tokenizers` on accents, CJK, punctuation, unknown and over-long words.
const isCjk = (c) => { const u = c.codePointAt(0);
  return (u >= 0x4E00 && u <= 0x9FFF) || (u >= 0x3400 && u <= 0x4DBF) || (u >= 0x20000 && u <= 0x2A6DF) ||
    (u >= 0x2A700 && u <= 0x2B73F) || (u >= 0x2B740 && u <= 0x2B81F) || (u >= 0x2B820 && u <= 0x2CEAF) ||
    (u >= 0xF900 && u <= 0xFAFF) || (u >= 0x2F800 && u <= 0x2FA1F); };
const isPunct = (c) => /[!-\/:-@\[-`{-~]/.test(c) || /\p{P}/u.test(c);
const isSpace = (c) => /\s/u.test(c);

function bertNormalize(text, tok) {
  let out = "";
  for (const c of text) {
    if (tok.clean_text) {
      if (c === "\0" || c === "\uFFFD" || (/[\p{Cc}\p{Cf}]/u.test(c) && !"\t\n\r".includes(c))) continue;
      if (isSpace(c)) { out += " "; continue; }
    }
    out += tok.handle_chinese_chars && isCjk(c) ? ` ${c} ` : c;
  }
  if (tok.lowercase) out = out.toLowerCase();
  if (tok.strip_accents) out = out.normalize("NFD").replace(/\p{Mn}/gu, "");
  return out;
}

function wordPieces(word, tok, index) {
  const chars = Array.from(word);
  if (chars.length > tok.max_chars) return [tok.unk_id];
  const ids = [];
  for (let start = 0; start < chars.length;) {
    let end = chars.length, found = -1;
    for (; end > start; end--) {
      const piece = (start > 0 ? tok.prefix : "") + chars.slice(start, end).join("");
      if (index.has(piece)) { found = index.get(piece); break; }
    }
    if (found < 0) return [tok.unk_id];
    ids.push(found);
    start = end;
  }
  return ids;
}

function encodeWordPiece(text, tok, length) {
  if (!tok.index) tok.index = new Map(tok.vocab.map((s, i) => [s, i]));
  const ids = [];
  let rest = text;
  while (rest.length) {  // special added tokens (e.g. [MASK]) are matched before normalization
    let at = -1, hit = null;
    for (const a of tok.added) { const k = rest.indexOf(a); if (k >= 0 && (at < 0 || k < at)) { at = k; hit = a; } }
    const plain = at < 0 ? rest : rest.slice(0, at);
    let word = "";
    for (const c of bertNormalize(plain, tok)) {
      if (isSpace(c) || isPunct(c)) {
        if (word) ids.push(...wordPieces(word, tok, tok.index));
        word = "";
        if (isPunct(c)) ids.push(...wordPieces(c, tok, tok.index));
      } else word += c;
    }
    if (word) ids.push(...wordPieces(word, tok, tok.index));
    if (at < 0) break;
    ids.push(tok.index.get(hit));
    rest = rest.slice(at + hit.length);
  }
  const room = Math.max(0, length - tok.before.length - tok.after.length);
  const row = [...tok.before, ...ids.slice(0, room), ...tok.after].slice(0, length);
  while (row.length < length) row.push(tok.pad_id);
  return row;
}

function imageToInput(img, m) {
  // resize (shorter side to `resize`, centre crop) or stretch to the input size, grey or RGB in [0, 1],
  // invert, input_range, then (x - mean) / std per channel: the preprocessing of the model's description
  const [C, H, W] = m.input.shape, p = m.preprocess || {};
  const cv = document.createElement("canvas");
  cv.width = W; cv.height = H;
  const g = cv.getContext("2d", { willReadFrequently: true });
  g.fillStyle = "white"; g.fillRect(0, 0, W, H);
  if (p.resize) {
    const s = p.resize / Math.min(img.width, img.height);
    const rw = Math.max(W, Math.round(img.width * s)), rh = Math.max(H, Math.round(img.height * s));
    g.drawImage(img, -Math.floor((rw - W) / 2), -Math.floor((rh - H) / 2), rw, rh);
  } else {
    g.drawImage(img, 0, 0, W, H);
  }
  const rgba = g.getImageData(0, 0, W, H).data, x = new Float32Array(C * H * W);
  const [lo, hi] = m.input_range || [0, 1];
  for (let i = 0; i < H * W; i++) {
    const r = rgba[4 * i], gr = rgba[4 * i + 1], b = rgba[4 * i + 2];
    const ch = C === 1 ? [(r * 299 + gr * 587 + b * 114) / 1000] : [r, gr, b];
    for (let c = 0; c < C; c++) {
      let v = ch[c] / 255;
      if (p.invert) v = 1 - v;
      v = lo + v * (hi - lo);
      const mean = p.mean ? p.mean[p.mean.length === 1 ? 0 : c] : 0, std = p.std ? p.std[p.std.length === 1 ? 0 : c] : 1;
      x[c * H * W + i] = (v - mean) / std;
    }
  }
  return x;
}

async function loadImage(src) {
  const img = new Image();
  img.src = src;
  await img.decode();
  return img;
}

async function setExample(k) {
  const m = model(), ex = m.examples[k];
  if (!ex) throw new Error(`?example=${k}: this model has ${m.examples.length} examples (0..${m.examples.length - 1})`);
  if (ex.kind === "array") setInput(Float32Array.from(ex.data), ex.label);
  else if (ex.kind === "text") { $("text").value = ex.data; setText(ex.data); }
  else setInput(imageToInput(await loadImage(ex.data), m), ex.label);
}

function setText(text) {
  const m = model();
  setInput(encodeText(text, m.tokenizer, m.input.shape[0]), text);
}

function setInput(data, label) {
  state.input = { data, label };
  showPreprocessing();
}

function showPreprocessing() {
  const m = model(), p = m.preprocess || {}, items = [];
  if (m.token) items.push(m.tokenizer ? `${m.tokenizer.level || "token"} vocabulary of ${m.tokenizer.vocab.length}, ` +
    `${m.input.shape[0]} positions${m.tokenizer.lowercase ? ", lower-cased" : ""}` : "token ids");
  else {
    items.push(`input ${m.input.shape.join("×")}`);
    if (p.resize) items.push(`resize ${p.resize}, centre crop`);
    if (p.invert) items.push("inverted (light strokes on dark)");
    if (p.mean) items.push(`mean ${p.mean.join("/")}`);
    if (p.std) items.push(`std ${p.std.join("/")}`);
  }
  $("prep").textContent = "the model sees: " + items.join("; ");
}

// ---------------------------------------------------------------- running
async function session(e) {
  if (!state.sessions[e.name]) {
    // one warm-up call on a zero input: the times shown are those of a loaded page, not of first-call set-up
    state.sessions[e.name] = ort.InferenceSession.create(e.file, { executionProviders: [state.ep] }).then(async (s) => {
      const m = model(), zeros = new Array(m.input.shape.reduce((a, b) => a * b, 1)).fill(0);
      await s.run(feedsFor(e, m, zeros, -1));
      return s;
    });
  }
  return state.sessions[e.name];
}

function feedTensor(m, data, dtype = m.input.dtype) {
  const dims = [1, ...m.input.shape];
  if (dtype === "float32") return new ort.Tensor("float32", Float32Array.from(data), dims);
  if (dtype === "int32") return new ort.Tensor("int32", Int32Array.from(data), dims);
  return new ort.Tensor("int64", BigInt64Array.from(Array.from(data, (v) => BigInt(Math.round(Number(v))))), dims);
}

// the explained input, the target, and a text model's side inputs as its tokenizer fills them: the attention mask
// (1 on tokens, 0 on padding) and token types (0: one sequence)
function feedsFor(e, m, data, target) {
  const feeds = { [m.input.name]: feedTensor(m, data), target: new ort.Tensor("int64", BigInt64Array.from([BigInt(target)]), [1]) };
  const pad = m.tokenizer ? m.tokenizer.pad_id : null;
  for (const side of e.side || []) {
    const values = Array.from(data, (v) => side.fill === "mask" ? (pad === null || Number(v) !== pad ? 1 : 0) : 0);
    feeds[side.name] = feedTensor(m, values, side.dtype);
  }
  return feeds;
}

async function explain(e, target) {
  const m = model(), s = await session(e);
  const feeds = feedsFor(e, m, state.input.data, target);
  const t0 = performance.now();
  const out = await s.run(feeds);
  const ms = performance.now() - t0;
  const flat = (name) => out[name] ? Array.from(out[name].data, Number) : null;
  const r = { input: Array.from(state.input.data, Number), relevance: flat("relevance"), scores: flat(e.outputs[0]),
              explained_class: flat("explained_class"), ms };
  if (out.conservation) r.conservation = flat("conservation");
  if (!r.explained_class) r.explained_class = [r.scores.indexOf(Math.max(...r.scores))];
  return r;
}

async function runAll() {
  document.body.dataset.state = "running";
  $("error").textContent = "";
  if (!state.input) throw new Error("no input: pick an example, drop an image or type a text");
  const chosen = [...document.querySelectorAll("#methods input:checked")].map((c) => c.value);
  const target = Number($("target").value);
  const grid = $("grid");
  grid.replaceChildren(inputCard());
  window.xcompile.results = {};
  for (const e of explainersOf(model()).filter((x) => chosen.includes(x.name))) {
    const r = await explain(e, target);
    window.xcompile.results[e.name] = r;
    grid.append(resultCard(e, r));
  }
  document.body.dataset.state = "done";
}

// ---------------------------------------------------------------- drawing
function planar(values) {
  // [C, H, W] -> H x W (channels summed); a vector -> a square, as `xcompile run` draws it
  const shape = model().input.shape;
  if (shape.length === 3) {
    const [C, H, W] = shape, map = new Float32Array(H * W);
    for (let c = 0; c < C; c++) for (let i = 0; i < H * W; i++) map[i] += values[c * H * W + i];
    return { map, H, W };
  }
  if (shape.length === 2) return { map: Float32Array.from(values), H: shape[0], W: shape[1] };
  const side = Math.ceil(Math.sqrt(values.length)), map = new Float32Array(side * side);
  map.set(values);
  return { map, H: side, W: side };
}

function mapCanvas({ map, H, W }, colour) {
  const cv = document.createElement("canvas");
  cv.width = W; cv.height = H; cv.className = "map";
  const g = cv.getContext("2d"), img = g.createImageData(W, H);
  for (let i = 0; i < H * W; i++) {
    const [r, gr, b] = colour(map[i]);
    img.data.set([r, gr, b, 255], 4 * i);
  }
  g.putImageData(img, 0, 0);
  return cv;
}

function scaleBar(max) {
  const div = document.createElement("div"), cv = document.createElement("canvas");
  div.className = "scale";
  cv.width = 120; cv.height = 1;
  const g = cv.getContext("2d");
  for (let x = 0; x < 120; x++) { g.fillStyle = css(bwr(x / 59.5 - 1)); g.fillRect(x, 0, 1, 1); }
  div.append(`−${fmt(max)}`, cv, `+${fmt(max)}`);
  return div;
}

function tokenRow(ids, values) {
  const m = model(), tok = m.tokenizer, div = document.createElement("div");
  div.className = "tokens";
  const shown = ids.map((id) => tok ? id !== tok.pad_id : true);
  const max = values ? Math.max(1e-30, ...values.filter((_, i) => shown[i]).map(Math.abs)) : 0;
  ids.forEach((id, i) => {
    if (!shown[i]) return;
    const s = document.createElement("span");
    s.textContent = tok ? (tok.vocab[id] ?? `<${id}>`) : String(id);
    if (values) { s.style.background = css(bwr(values[i] / max)); s.title = `R = ${values[i]}`; }
    div.append(s);
  });
  return { div, max };
}

function inputCard() {
  const m = model(), card = document.createElement("div");
  card.className = "card" + (m.token ? " wide" : "");
  card.innerHTML = `<h3>input: ${escapeHtml(String(state.input.label))}</h3>`;
  if (m.token) card.append(tokenRow(Array.from(state.input.data, Number), null).div);
  else {
    const p = planar(Array.from(state.input.data)), lo = Math.min(...p.map), hi = Math.max(...p.map);
    card.append(mapCanvas(p, (v) => { const c = Math.round(255 * (v - lo) / ((hi - lo) || 1)); return [c, c, c]; }));
    const f = document.createElement("div");
    f.className = "facts"; f.textContent = "what the model sees (its input, grey scale from min to max)";
    card.append(f);
  }
  return card;
}

function resultCard(e, r) {
  const m = model(), card = document.createElement("div");
  card.className = "card" + (m.token ? " wide" : "");
  const k = r.explained_class[0], score = r.scores.length > 1 ? r.scores[k] : r.scores[0];
  const sum = r.relevance.reduce((a, b) => a + b, 0);
  const cons = r.conservation ? r.conservation[0] : sum / score;
  card.innerHTML = `<h3>${escapeHtml(e.name)}</h3>`;
  let max;
  if (m.token) {
    const t = tokenRow(Array.from(state.input.data, Number), r.relevance);
    card.append(t.div); max = t.max;
  } else {
    const p = planar(r.relevance);
    max = Math.max(1e-30, ...p.map.map(Math.abs));
    card.append(mapCanvas(p, (v) => bwr(v / max)));
  }
  card.append(scaleBar(max));
  const f = document.createElement("div");
  f.className = "facts";
  f.innerHTML = `class <b>${escapeHtml(className(k))}</b>, score ${fmt(score)}<br>Σ R ${fmt(sum)}; Σ R / score ` +
    `${fmt(cons)}<br>${escapeHtml(e.method)}${e.rules ? " " + escapeHtml(e.rules) : ""} · ${r.ms.toFixed(1)} ms`;
  card.append(f);
  return card;
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// ---------------------------------------------------------------- page
function buildModel() {
  const m = model();
  $("example").replaceChildren(new Option("— example —", ""), ...m.examples.map((ex, i) => new Option(ex.label, i)));
  $("image-input").hidden = m.token || m.input.shape.length !== 3;
  $("text-input").hidden = !(m.token && m.tokenizer);
  const only = params.get("methods") ? params.get("methods").split(",") : null;
  $("methods").replaceChildren(...explainersOf(m).map((e) => {
    const l = document.createElement("label"), c = document.createElement("input");
    c.type = "checkbox"; c.value = e.name; c.checked = !only || only.includes(e.name);
    l.append(c, " " + e.name);
    return l;
  }));
  const n = m.classes ? m.classes.length : 0;
  $("target").replaceChildren(new Option("the predicted class", -1),
    ...Array.from({ length: n }, (_, k) => new Option(`class ${className(k)}`, k)));
  state.input = null;
  showPreprocessing();
}

async function chooseEp() {
  const want = params.get("ep");
  if (want) return want;
  try {
    if (navigator.gpu && await navigator.gpu.requestAdapter()) return "webgpu";
  } catch (err) { /* no adapter: WASM */ }
  return "wasm";
}

async function main() {
  state.manifest = await (await fetch("manifest.json")).json();
  window.xcompile.manifest = state.manifest;
  ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  state.ep = await chooseEp();
  window.xcompile.ep = state.ep;
  $("runtime").textContent = `onnxruntime-web ${state.manifest.ort_web} (${state.ep}, ${ort.env.wasm.numThreads} thread(s))`;
  const models = state.manifest.models;
  $("model").replaceChildren(...models.map((m, i) => new Option(`${m.input.name} ${m.input.shape.join("×")} ` +
    `(${m.explainers.length} explainers)`, i)));
  $("model-box").hidden = models.length < 2;
  state.model = Number(params.get("model") || 0);
  if (!models[state.model]) throw new Error(`?model=${state.model}: the site has ${models.length} models`);
  $("model").value = state.model;
  buildModel();
  $("model").onchange = () => { state.model = Number($("model").value); buildModel(); $("grid").replaceChildren(); };
  $("example").onchange = () => $("example").value !== "" && setExample(Number($("example").value)).then(runAll).catch(fail);
  $("text").oninput = () => setText($("text").value);
  $("text").onkeydown = (ev) => { if (ev.key === "Enter") runAll().catch(fail); };
  $("run").onclick = () => runAll().catch(fail);
  const useFile = (f) => f && f.type.startsWith("image/") && loadImage(URL.createObjectURL(f))
    .then((img) => setInput(imageToInput(img, model()), f.name)).then(runAll).catch(fail);
  $("file").onchange = () => useFile($("file").files[0]);
  const drop = $("drop");
  drop.ondragover = (ev) => { ev.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (ev) => { ev.preventDefault(); drop.classList.remove("over"); useFile(ev.dataTransfer.files[0]); };
  if (params.has("example")) {
    const k = Number(params.get("example"));
    $("example").value = k;
    await setExample(k);
    await runAll();
  } else {
    document.body.dataset.state = "ready";
  }
}

main().catch(fail);
