// What the service offers, on the page: which engines can run (and why not), and the models.

import { esc } from "./api.js";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

export function engineAvailability(health, listing) {
  const e = health.engines || {};
  const why = {
    esrgan: e.esrgan?.error ? e.esrgan.message || e.esrgan.error
      : listing.models.length ? "" : "No model installed: upscaler models pull default",
    flux: e.flux?.error ? e.flux.message || e.flux.error
      : e.flux?.installed === false ? e.flux.message || "FLUX is not installed" : "",
    imagen: e.imagen?.error ? e.imagen.message || e.imagen.error
      : e.imagen?.configured === false ? "No Google Cloud credentials or project set up" : "",
  };
  for (const input of $$("input[name=engine]")) {
    // The service's own words, less the file paths an operator needs and a user does not.
    const reason = (why[input.value] || "").replace(/\s*\([^)]*\/[^)]*\)/g, "");
    input.disabled = Boolean(reason);
    $(".why", input.parentElement).textContent = reason;
    input.parentElement.title = why[input.value] || "";
  }
  if ($("input[name=engine]:checked").disabled) {
    const first = $$("input[name=engine]").find((i) => !i.disabled);
    if (first) first.checked = true;
  }
}

export function fillModels(listing) {
  // Listed again (a new key): the user's choices stay where the models still are.
  const names = listing.models.map((m) => m.name);
  const chosen = names.includes($("#model").value) ? $("#model").value : listing.default;
  const compared = $$("#compareModels input:checked").map((c) => c.value).filter((n) => names.includes(n));
  $("#model").replaceChildren(...listing.models.map((m) => {
    const o = new Option(`${m.name}${m.name === listing.default ? " (default)" : ""} · ${m.architecture} ×${m.scale}`, m.name);
    o.selected = m.name === chosen;
    return o;
  }));
  $("#compareModels").replaceChildren(...listing.models.map((m, i) => {
    const label = document.createElement("label");
    label.className = "check";
    const checked = compared.length ? compared.includes(m.name) : i < 3;
    label.innerHTML = `<input type="checkbox" value="${esc(m.name)}" ${checked ? "checked" : ""}> ${esc(m.name)} <span class="muted">${esc(m.architecture)} ×${m.scale}</span>`;
    return label;
  }));
}
