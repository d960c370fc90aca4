// Calls to the service: the API key, its errors in its own words, and a job's event stream.

export const auth = { key: "" };

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `The service answered ${status}`);
    this.status = status; this.code = body?.error || `http_${status}`;
  }
}

export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (auth.key) headers.set("Authorization", `Bearer ${auth.key}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status >= 400) {
    let body = null;
    try { body = await response.json(); } catch { /* not JSON: the status says it */ }
    throw new ApiError(response.status, body);
  }
  return response;
}

export function errorHtml(error) {
  const code = error instanceof ApiError
    ? ` <code>${error.status ? `${error.status} ` : ""}${esc(error.code)}</code>` : "";
  return `${esc(error.message)}${code}`;
}

export const esc = (s) => String(s).replace(/[&<>"']/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));


// Server-sent events read with fetch (EventSource cannot send the API key), resumed with
// Last-Event-ID after a cut; polling /api/status if the stream cannot be had.
export async function followJob(jobId, show) {
  let last = 0;
  // Five cuts in a row without an event, and it polls instead (-1: the ++ makes it 0 again).
  for (let cuts = 0; cuts < 5; cuts++) {
    try {
      const headers = last ? { "Last-Event-ID": String(last) } : {};
      const response = await api(`/api/jobs/${jobId}/events`, { headers });
      if (response.status === 204) return;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (!event) continue;
          last = Number(event.id) || last;
          cuts = -1;
          if (await show(event.data)) return;
        }
      }
    } catch (error) {
      if (error instanceof ApiError && error.status < 500 && error.status !== 429) throw error;
    }
    await sleep(1000 * Math.max(1, cuts + 1));
  }
  for (;;) {  // the stream is not to be had: poll
    const status = await (await api(`/api/status/${jobId}`)).json();
    if (await show(status)) return;
    await sleep(1000);
  }
}

function parseEvent(block) {
  const event = {};
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":"), name = i < 0 ? line : line.slice(0, i);
    event[name] = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
  }
  return event.data ? { id: event.id, event: event.event, data: JSON.parse(event.data) } : null;
}
