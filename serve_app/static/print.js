// The bleed on the page: the form's bleed fields, the plan's bleed line, and the trim line (a
// dashed rectangle at the trim box: the print without its bleed) over a picture of the file.

const pct = (part, whole) => `${(100 * part) / whole}%`;
const fmt = (n) => Number(n.toFixed(3)).toString();

// The bleed fields of a request (none when the bleed is 0: a factor alone takes none).
export function bleedFields(amount, unit) {
  return Number(amount) > 0 ? { bleed: Number(amount), bleed_unit: unit } : {};
}

export function bleedLine(p) {
  const [w, h] = p.trimInches;
  return `Bleed ${fmt(p.bleed.amount)} ${p.bleed.unit} a side (${fmt(p.bleed.px)} px): the print trims to ${fmt(w)} × ${fmt(h)} in at the dashed line.`;
}

// The dashed trim line over `box` (a positioned element showing the whole file, `size` px).
export function drawTrim(box, size, trimBox) {
  const [l, t, r, b] = trimBox, line = document.createElement("span");
  line.className = "trim";
  line.title = "Trim line: the print is cut here; outside it is the bleed";
  Object.assign(line.style, { left: pct(l, size.width), top: pct(t, size.height),
    width: pct(r - l, size.width), height: pct(b - t, size.height) });
  box.append(line);
  return line;
}

// The planned file: the image as it will fill it (a centred crop, as the service cuts it),
// with its trim line.
export function planPreview(url, size, trimBox) {
  const fig = document.createElement("div");
  fig.className = "plan-preview";
  fig.style.aspectRatio = `${size.width} / ${size.height}`;
  const img = new Image();
  img.alt = "The planned file, its bleed outside the dashed trim line";
  img.src = url;
  fig.append(img);
  drawTrim(fig, size, trimBox);
  return fig;
}
