// The upscaler page: pick images, plan the output (GET /api/plan: the service's own rule),
// send them, follow each job's events (GET /api/jobs/{id}/events), show and download the result.
// Hand-written, no dependencies; talks to this host only.

import { ApiError, api, auth, errorHtml, esc, followJob } from "./api.js";
import { readDpi } from "./dpi.js";
import { showFidelity } from "./fidelity.js";
import { engineAvailability, fillModels } from "./offer.js";
import { bleedFields, bleedLine, drawTrim, planPreview } from "./print.js";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const KEY_STORE = "upscaler.apiKey";
const PRESETS = { "8x10in": [8, 10, "in"], a4: [21, 29.7, "cm"], a3: [29.7, 42, "cm"],
  "24x36in": [24, 36, "in"] };
const fmtSeconds = (s) => s < 90 ? `${Math.max(1, Math.round(s))} s` : `${Math.round(s / 60)} min`;
const fmtNum = (n, d = 2) => Number(n.toFixed(d)).toString();
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

auth.key = localStorage.getItem(KEY_STORE) || "";
const state = { keysOn: false, health: null,
  models: [], defaultModel: null, items: [], selected: null, planTimer: 0, planSeq: 0 };

async function describe(file) {
  const url = URL.createObjectURL(file);
  const head = await file.slice(0, 256 * 1024).arrayBuffer();
  const size = await new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve([img.naturalWidth, img.naturalHeight]);
    img.onerror = () => resolve(null);  // not something the browser shows: the API will say
    img.src = url;
  });
  return { url, width: size?.[0], height: size?.[1], dpi: readDpi(head) };
}

// --- the queue of picked images -----------------------------------------------------------
let nextId = 1;
async function addFiles(files) {
  for (const file of files) {
    const item = { id: nextId++, file, name: file.name, ...(await describe(file)) };
    state.items.push(item);
    if (!state.selected) state.selected = item;
  }
  renderQueue(); schedulePlan();
}

function renderQueue() {
  const list = $("#queue");
  list.replaceChildren(...state.items.map((item) => {
    const li = document.createElement("li");
    li.className = item === state.selected ? "selected" : "";
    li.tabIndex = 0;
    li.setAttribute("aria-label", `${item.name}, select for the plan and comparison`);
    const size = item.width ? `${item.width} × ${item.height} px` : "size unknown";
    const dpi = item.dpi ? `${item.dpi} DPI` : "no DPI in file";
    li.innerHTML = `${item.width ? `<img src="${item.url}" alt="">` : '<span class="thumb"></span>'}
      <div><div class="name">${esc(item.name)}</div><div class="info">${size} · ${dpi}</div></div>
      <button type="button" class="ghost" aria-label="Remove ${esc(item.name)}">✕</button>`;
    li.addEventListener("click", (e) => {
      if (e.target.closest("button")) {
        state.items = state.items.filter((i) => i !== item);
        if (state.selected === item) state.selected = state.items[0] || null;
      } else state.selected = item;
      renderQueue(); schedulePlan();
    });
    li.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); li.click(); } });
    return li;
  }));
}

// --- the form ----------------------------------------------------------------------------
const engine = () => $("input[name=engine]:checked").value;
const mode = () => $("input[name=mode]:checked").value;

function sizingFields() {
  const f = {};
  if (mode() === "print") {
    const toIn = $("#unit").value === "cm" ? 1 / 2.54 : 1;
    f.target_width_inches = +(Number($("#pw").value) * toIn).toFixed(4);
    f.target_height_inches = +(Number($("#ph").value) * toIn).toFixed(4);
    f.target_dpi = $("#dpi").value;
    f.crop_to_target = $("#crop").checked;
    Object.assign(f, bleedFields($("#bleed").value, $("#bleedUnit").value));
  } else {
    f.upscale_factor = engine() === "imagen" ? `x${$("#factor").value}` : $("#factor").value;
  }
  return f;
}

// formats (issue 23): quality and compression only for their format; the rest as chosen.
function printFileFields() {
  const fmt = $("#format").value, f = { metadata: $("#metadata").value, output_profile: $("#outputProfile").value };
  if (fmt === "jpeg") f.jpeg_quality = $("#jpegQuality").value;
  if (fmt === "tiff" && $("#tiffCompression").value) f.tiff_compression = $("#tiffCompression").value;
  if ($("#keepGps").checked) f.keep_gps = true;
  return f;
}

function jobFields(modelOverride) {
  const f = { ...sizingFields(), output_format: $("#format").value, wait: 0, ...printFileFields() };
  const tile = $("#tile").value, model = modelOverride || $("#model").value;
  if (engine() === "esrgan") {
    Object.assign(f, { use_fp16: $("#fp16").checked });
    if (model) f.model = model;
    if (tile) f.tile_size = tile;
  } else if (engine() === "flux") {
    Object.assign(f, { denoise: $("#denoise").value, steps: $("#steps").value });
    if (model) f.upscale_model = model;
    if (tile) f.tile_size = tile;
  }
  return f;
}

function applyPreset() {
  const preset = PRESETS[$("#preset").value];
  if (!preset) return;
  let [w, h, unit] = preset;
  const item = state.selected;
  if (item?.width && (item.width > item.height) !== (w > h)) [w, h] = [h, w];  // follow the image
  $("#unit").value = unit; $("#pw").value = w; $("#ph").value = h;
}

function syncForm() {
  $("#factorBox").hidden = mode() !== "factor";
  $("#printBox").hidden = mode() !== "print";
  const e = engine();
  $$(".flux-only").forEach((el) => { el.hidden = e !== "flux"; });
  $$(".esrgan-only").forEach((el) => { el.hidden = e !== "esrgan"; });
  $$(".jpeg-only").forEach((el) => { el.hidden = $("#format").value !== "jpeg"; });
  $$(".tiff-only").forEach((el) => { el.hidden = $("#format").value !== "tiff"; });
  $("#modelLabel").hidden = e === "imagen";
  $("#modelLabel").firstChild.textContent = e === "flux" ? "Pre-pass model " : "Model ";
  $("#tile").placeholder = e === "flux" ? "512" : "automatic";
  for (const opt of $("#factor").options) opt.disabled = e === "imagen" && !["2", "3", "4"].includes(opt.value);
  if ($("#factor").selectedOptions[0]?.disabled) $("#factor").value = "4";
  $("#compare").hidden = e !== "esrgan" || state.models.length < 2;
  if ($("#compare").hidden) $("#compareBox").hidden = true;
  schedulePlan();
}

// --- the plan: asked of the service, so the page never disagrees with it ----------------
function schedulePlan() { clearTimeout(state.planTimer); state.planTimer = setTimeout(plan, 180); }

async function plan() {
  const box = $("#plan"), item = state.selected;
  box.classList.remove("bad");
  if (!item) { box.textContent = "Choose an image to see what you will get."; return; }
  if (!item.width) { box.textContent = "The browser cannot read this file's size; the service will check it when you send it."; return; }
  const seq = ++state.planSeq;
  const query = new URLSearchParams({ width: item.width, height: item.height, engine: engine(), ...sizingFields(), output_format: $("#format").value });
  try {
    const p = await (await api(`/api/plan?${query}`)).json();
    if (seq !== state.planSeq) return;
    const [wi, hi] = p.printInches;
    const lines = [`${fmtNum(p.scaleFactor)}× · prints ${fmtNum(wi)} × ${fmtNum(hi)} in (${fmtNum(wi * 2.54, 1)} × ${fmtNum(hi * 2.54, 1)} cm) at ${p.dpi} DPI`];
    if (p.cropInfo) {
      const c = p.cropInfo, side = c.direction === "vertical" ? "top and bottom" : "left and right";
      lines.push(p.cropApplied
        ? `Cropped to the print: ${c.amount_px} px (${fmtNum(c.amount_inches)} in) off the ${side}, centred.`
        : `Other shape than the print: ${c.amount_px} px (${fmtNum(c.amount_inches)} in) overhang ${side}; tick “Crop” to cut it, or crop when printing.`);
    }
    if (p.bleed) lines.push(bleedLine(p));
    lines.push(`About ${fmtSeconds(p.estimatedTime)} with the jobs waiting now.`);
    box.innerHTML = `<div class="big">${p.finalSize.width} × ${p.finalSize.height} px</div>
      <ul>${lines.map((l) => `<li>${esc(l)}</li>`).join("")}</ul>`;
    if (p.bleed) box.append(planPreview(item.url, p.finalSize, p.bleed.trimBox));
  } catch (error) {
    if (seq !== state.planSeq) return;
    box.classList.add("bad"); box.innerHTML = errorHtml(error);
  }
}

// --- jobs -------------------------------------------------------------------------------
async function submit(item, fields, title) {
  const card = newCard(item, title || item.name, fields);
  const form = new FormData();
  form.append("file", item.file, item.name);
  for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
  try {
    const body = await (await api(`/api/upscale/${engine()}`, { method: "POST", body: form })).json();
    card.jobId = body.jobId;
    card.node.dataset.jobId = body.jobId;
    card.expected = body;
    card.show({ status: body.status, progress: body.progress, estimated_time: body.estimatedTime });
    await followJob(card.jobId, card.show);
  } catch (error) {
    card.fail(error);
  }
  return card;
}

function newCard(item, title, fields) {
  $("#noJobs").hidden = true;
  const node = $("#jobTpl").content.firstElementChild.cloneNode(true);
  $("#jobs").prepend(node);
  $(".job-title", node).textContent = title;
  const size = fields.target_width_inches
    ? `${fmtNum(fields.target_width_inches)} × ${fmtNum(fields.target_height_inches)} in at ${fields.target_dpi} DPI`
    : `${String(fields.upscale_factor).replace("x", "")}×`;
  const bleed = fields.bleed ? `bleed ${fields.bleed} ${fields.bleed_unit}` : "";
  $(".job-meta", node).textContent = [engine().toUpperCase(), fields.model || fields.upscale_model, size,
    bleed, fields.output_format.toUpperCase()].filter(Boolean).join(" · ");
  const card = { node, item, jobId: null, expected: null, engine: engine() };
  const cancel = $(".cancel", node);
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try { await api(`/api/jobs/${card.jobId}`, { method: "DELETE" }); }
    catch (error) { card.error(error); cancel.disabled = false; }
  });
  card.setProgress = (p) => {
    $(".bar span", node).style.width = `${p}%`;
    $(".bar", node).setAttribute("aria-valuenow", String(p));
  };
  card.error = (error) => { const box = $(".error", node); box.hidden = false; box.innerHTML = errorHtml(error); };
  card.fail = (error) => { card.error(error); setBadge(node, "failed"); cancel.hidden = true;
    $(".job-status", node).textContent = ""; };
  card.show = async (s) => {  // true once the job has ended
    setBadge(node, s.status);
    card.setProgress(s.progress ?? 0);
    const tiles = s.tiles_total ? ` · tile ${s.tiles_done} of ${s.tiles_total}` : "";
    const left = s.estimated_time ? ` · about ${fmtSeconds(s.estimated_time)} left` : "";
    const queue = s.status === "queued" && s.queue_position ? ` · ${s.queue_position} ahead` : "";
    $(".job-status", node).textContent = s.status === "queued" ? `Waiting${queue}${left}`
      : s.status === "processing" ? `${s.progress} %${tiles}${left}` : "";
    if (!TERMINAL.has(s.status)) return false;
    cancel.hidden = true;
    if (s.status === "completed") await showResult(card, s);
    else if (s.status === "failed") card.error(new ApiError(null, { message: s.error, error: s.error_code }));
    else $(".job-status", node).textContent = "Cancelled: nothing was kept.";
    return true;
  };
  return card;
}

function setBadge(node, status) {
  const badge = $(".badge", node);
  badge.textContent = status; badge.className = `badge ${status}`;
  node.classList.toggle("done", status === "completed");
}

async function showResult(card, s) {
  const node = card.node, blob = await (await api(s.output_url)).blob();
  const url = URL.createObjectURL(blob), ext = s.output_url.split(".").pop();
  const dpi = readDpi(await blob.slice(0, 256 * 1024).arrayBuffer());
  const { width, height } = s.output_size;
  const secs = s.processing_time != null ? ` · took ${fmtSeconds(s.processing_time)}` : "";
  const info = `${width} × ${height} px · ${dpi ? `${dpi} DPI · ${fmtNum(width / dpi)} × ${fmtNum(height / dpi)} in` : "no DPI"}${secs}`;
  $(".job-status", node).textContent = "Done.";
  $(".result", node).hidden = false;
  $(".result-info", node).textContent = info;
  const link = $(".download", node);
  link.href = url;
  link.download = `${card.item.name.replace(/\.[^.]+$/, "")}-${width}x${height}.${ext}`;
  card.result = { url, width, height, dpi, blob };
  if (s.quality) showFidelity(node, s.quality, width, height);
  if (ext === "tiff") {  // browsers do not show TIFF
    $(".viewer", node).hidden = true; $(".zoom", node).hidden = true;
    $(".result-info", node).textContent = `${info} · TIFF: download it to see it`;
    return;
  }
  const box = $(".compare", node);
  box.style.aspectRatio = `${width} / ${height}`;
  $(".after", node).src = url;
  $(".before", node).src = card.item.url;
  if (s.trim_box) drawTrim(box, s.output_size, s.trim_box);
  const split = $(".split", node);
  const setSplit = () => {
    box.style.setProperty("--split", `${split.value}%`);
    $(".after", node).style.clipPath = `inset(0 0 0 ${split.value}%)`;
  };
  split.addEventListener("input", setSplit); setSplit();
  const zoom = (one) => {
    box.style.width = one ? `${width}px` : "100%";
    $(".fit", node).setAttribute("aria-pressed", String(!one));
    $(".one", node).setAttribute("aria-pressed", String(one));
  };
  $(".fit", node).addEventListener("click", () => zoom(false));
  $(".one", node).addEventListener("click", () => zoom(true));
}

async function runQueue() {
  if (!state.items.length) { $("#plan").textContent = "Add an image first."; return; }
  // New images only; with none new, all again (other settings, likely).
  let pending = state.items.filter((i) => !i.sent);
  if (!pending.length) pending = state.items;
  for (const item of pending) item.sent = true;
  // One at a time: the queue is the service's to keep; the cards show each job's turn.
  for (const item of pending) await submit(item, jobFields());
}

// --- compare models: one image, 2-3 ESRGAN models, side by side at the same zoom ---------
async function runComparison() {
  const item = state.selected, models = $$("#compareModels input:checked").map((c) => c.value);
  if (!item) return;
  if (models.length < 2 || models.length > 3) { alert("Pick two or three models."); return; }
  const cards = await Promise.all(models.map((model) =>
    submit(item, jobFields(model), `${item.name} · ${model}`)));
  const done = cards.filter((c) => c.result);
  if (done.length < 2) return;
  const node = $("#jobTpl").content.firstElementChild.cloneNode(true);
  node.replaceChildren();
  node.innerHTML = `<header><h3 class="job-title">${esc(item.name)}: ${done.length} models side by side</h3>
    <span class="zoom"><button type="button" class="ghost fit" aria-pressed="true">Fit</button><button type="button" class="ghost one" aria-pressed="false">100 %</button></span></header>
    <div class="side"></div>`;
  const side = $(".side", node);
  for (const c of done) {
    const fig = document.createElement("figure");
    fig.innerHTML = `<div class="view"><img alt="Result of ${esc(c.node.querySelector(".job-meta").textContent)}" src="${c.result.url}"></div>
      <figcaption>${esc($(".job-title", c.node).textContent.split(" · ").pop())} · ${esc($(".result-info", c.node).textContent)}</figcaption>`;
    $(".view", fig).style.setProperty("--ratio", `${c.result.width} / ${c.result.height}`);
    side.append(fig);
  }
  const views = $$(".view", node);
  views.forEach((v) => v.addEventListener("scroll", () => views.forEach((o) => {
    if (o !== v) { o.scrollLeft = v.scrollLeft; o.scrollTop = v.scrollTop; }
  })));
  const zoom = (one) => {
    views.forEach((v) => v.classList.toggle("one", one));
    $(".fit", node).setAttribute("aria-pressed", String(!one));
    $(".one", node).setAttribute("aria-pressed", String(one));
  };
  $(".fit", node).addEventListener("click", () => zoom(false));
  $(".one", node).addEventListener("click", () => zoom(true));
  $("#jobs").prepend(node);
}

// --- what the service offers ------------------------------------------------------------
async function loadService() {
  try {
    const response = await fetch("/api/health", { headers: auth.key ? { Authorization: `Bearer ${auth.key}` } : {} });
    const health = await response.json();
    auth.keysOn = !health.engines;  // keys on and none (valid) given: liveness only
    $("#keybar").hidden = !auth.keysOn && !auth.key;
    if (auth.keysOn) {
      chip(false, auth.key ? "The API key was not accepted" : "Enter your API key");
      $("#keynote").textContent = auth.key ? "This key was not accepted." : "This service needs an API key.";
      return;
    }
    $("#keynote").textContent = auth.key ? "Key in use (kept in this browser)." : "";
    state.health = health;
    const listing = (await (await api("/api/models")).json()).esrgan;
    state.models = listing.models.map((m) => m.name);
    state.defaultModel = listing.default;
    engineAvailability(health, listing);
    fillModels(listing);
    // Ready once the models are listed: the choices a user makes next are not replaced.
    const gpu = health.gpu_available ? health.gpu_name || "GPU" : "CPU";
    chip(health.status === "healthy", health.status === "healthy" ? `Ready · ${gpu}` : "Degraded: some engines do not answer");
  } catch (error) {
    chip(false, `Not reachable: ${error.message}`);
  }
  syncForm();
}

function chip(ok, text) { const c = $("#health"); c.textContent = text; c.className = `chip ${ok ? "ok" : "bad"}`; }

// --- wiring -----------------------------------------------------------------------------
function wire() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  for (const type of ["dragenter", "dragover"]) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); addFiles([...e.dataTransfer.files]); });
  $$("input[name=engine], input[name=mode]").forEach((i) => i.addEventListener("change", syncForm));
  $("#preset").addEventListener("change", () => { applyPreset(); schedulePlan(); });
  for (const id of ["#pw", "#ph", "#unit"]) $(id).addEventListener("input", () => { $("#preset").value = "custom"; schedulePlan(); });
  for (const id of ["#factor", "#dpi", "#crop", "#bleedUnit"]) $(id).addEventListener("change", schedulePlan);
  $("#bleed").addEventListener("input", schedulePlan);
  $("#format").addEventListener("change", () => { syncForm(); schedulePlan(); });
  $("#rotate").addEventListener("click", () => { [$("#pw").value, $("#ph").value] = [$("#ph").value, $("#pw").value]; schedulePlan(); });
  $("#setup").addEventListener("submit", (e) => { e.preventDefault(); runQueue(); });
  $("#compare").addEventListener("click", () => { $("#compareBox").hidden = !$("#compareBox").hidden; });
  $("#compareGo").addEventListener("click", runComparison);
  $("#apikey").value = auth.key;
  $("#keybar").addEventListener("submit", (e) => {
    e.preventDefault();
    auth.key = $("#apikey").value.trim();
    if (auth.key) localStorage.setItem(KEY_STORE, auth.key); else localStorage.removeItem(KEY_STORE);
    loadService();
  });
  $("input[name=mode][value=print]").addEventListener("change", () => { if ($("#preset").value !== "custom") applyPreset(); });
  applyPreset();
}

wire();
loadService();
