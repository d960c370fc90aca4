// The fidelity report of a finished job (the status answer's `quality`): a badge, and a
// per-tile heat map of its colour drift drawn over the result preview.

// ΔE2000 below 1 is not visible, above 2 is; a seam score near 1 means no seam.
export function fidelityLevel(q) {
  const seam = q.seam_score ?? 1;
  if (q.delta_e_mean <= 1 && seam <= 1.1) return "good";
  if (q.delta_e_mean <= 2 && seam <= 1.5) return "fair";
  return "poor";
}

export function fidelityText(q) {
  const parts = [`ΔE ${q.delta_e_mean.toFixed(1)}`];
  if (q.seam_score != null) parts.push(`seams ${q.seam_score.toFixed(2)}`);
  if (q.tiles_rerun) parts.push(`${q.tiles_rerun} tile${q.tiles_rerun > 1 ? "s" : ""} redrawn`);
  return parts.join(" · ");
}

export function fidelityTitle(q) {
  return `Colour drift (CIEDE2000, the result shrunk back to the original's size): mean ${q.delta_e_mean}, `
    + `95th percentile ${q.delta_e_p95}. Below 1 is invisible, above 2 visible.`
    + (q.seam_score != null ? ` Seam score ${q.seam_score} (1.00 = no seam at the tile borders).` : "")
    + (q.tiles_rerun ? ` ${q.tiles_rerun} tile(s) drifted and were drawn again.` : "");
}

// Green (ΔE 0) through amber (1.5) to red (3 and more), half transparent.
function heatColour(de) {
  const t = Math.min(1, de / 3);
  const hue = 120 * (1 - t);
  return `hsla(${hue}, 85%, 50%, ${0.15 + 0.4 * t})`;
}

// `width` x `height`: the result as shown. Tile boxes are in the output before any crop, which
// is centred: cells are shifted by half the difference.
export function drawHeatMap(canvas, q, width, height) {
  if (!q.tiles?.length) return;
  const fullW = Math.max(...q.tiles.map((t) => t.box[2]));
  const fullH = Math.max(...q.tiles.map((t) => t.box[3]));
  const dx = Math.floor((fullW - width) / 2), dy = Math.floor((fullH - height) / 2);
  const k = Math.min(1, 1024 / Math.max(width, height));  // a small canvas, stretched by CSS
  canvas.width = Math.max(1, Math.round(width * k));
  canvas.height = Math.max(1, Math.round(height * k));
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const t of q.tiles) {
    const [x0, y0, x1, y1] = t.box;
    ctx.fillStyle = heatColour(t.delta_e_mean);
    ctx.fillRect((x0 - dx) * k, (y0 - dy) * k, (x1 - x0) * k, (y1 - y0) * k);
    ctx.strokeStyle = "rgba(255, 255, 255, .35)";
    ctx.strokeRect((x0 - dx) * k, (y0 - dy) * k, (x1 - x0) * k, (y1 - y0) * k);
  }
}

// The badge and the heat map's toggle on a result card (the job template's nodes).
export function showFidelity(node, q, width, height) {
  const $ = (sel) => node.querySelector(sel);
  const badge = $(".fidelity"), toggle = $(".heat-toggle"), heat = $(".heat");
  badge.textContent = fidelityText(q); badge.title = fidelityTitle(q);
  badge.className = `fidelity ${fidelityLevel(q)}`; badge.hidden = false;
  drawHeatMap(heat, q, width, height);
  toggle.hidden = false;
  toggle.addEventListener("click", () => {
    heat.hidden = !heat.hidden; toggle.setAttribute("aria-pressed", String(!heat.hidden));
  });
}
