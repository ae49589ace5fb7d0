// Talking to the daemon: JSON reads, actions with the CSRF header, and the
// live poll that says when what a page shows has changed.

import { $ } from "./dom.js";

const POLL_MS = 1500; // how often /api/live is asked whether anything changed

export async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-cache" });
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === "ciwatch_csrf") return decodeURIComponent(rest.join("="));
  }
  return "";
}

export async function send(method, url, body) {
  const headers = { "X-CSRF-Token": csrfToken() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try {
    data = await r.json();
  } catch (e) {
    data = null;
  }
  if (!r.ok) {
    const detail = data && data.detail;
    throw new Error(typeof detail === "string" ? detail : r.status + " " + r.statusText);
  }
  return data;
}

// -- live: ask whether anything changed, then fetch what the page shows -----

export function startLive(refresh) {
  let version = null;
  let busy = false;
  const status = $("#live");
  const say = (state, text) => {
    if (status) {
      status.dataset.state = state;
      status.textContent = text;
    }
  };
  async function tick() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const v = (await getJSON("/api/live")).version;
      if (v !== version) {
        await refresh();
        version = v;
      }
      say("on", "updates: live");
    } catch (e) {
      say("off", "updates: reconnecting");
    } finally {
      busy = false;
    }
  }
  setInterval(tick, POLL_MS);
  document.addEventListener("visibilitychange", tick);
  tick();
  return () => {
    version = null; // the next tick refreshes
    tick();
  };
}
