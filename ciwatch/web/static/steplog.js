// A step's log: its tail, earlier and later pages, a jump to a linked line, and
// live lines over server-sent events.

import { $, el } from "./dom.js";
import { elapsed, when } from "./format.js";

const MAX_STREAMS = 4; // log streams per page (browsers allow ~6 connections per host)
const TAIL = 200; // lines shown when a step's log is opened
const PAGE = 1000; // lines loaded by "show earlier" / "show later"
const MAX_DOM_LINES = 20000; // a live log drops its oldest lines beyond this
const CLASS_OK = /^(?:(?:fg|bg)(?:1[0-5]|[0-9]|i)|a[bdius])$/;

function lineNode(sid, started, rec) {
  const text = el("span", { class: "x" });
  if (rec.spans) {
    for (const [cls, part] of rec.spans) {
      const safe = String(cls).split(" ").filter((c) => CLASS_OK.test(c)).join(" ");
      text.append(el("span", { class: safe }, part));
    }
  } else {
    text.textContent = rec.text;
  }
  const id = "L" + sid + "-" + Number(rec.n);
  return el("div", { class: rec.kind === "note" ? "l note" : "l", id, "data-n": Number(rec.n) },
    el("a", { class: "n", href: "#" + id }, String(rec.n)),
    el("span", { class: "t", title: when(rec.t) }, elapsed(rec.t, started)),
    text);
}

function logOf(step) {
  return $(".log", step);
}

function lastN(step) {
  return Number(step.dataset.last || 0);
}

function atBottom() {
  return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 60;
}

function foldLink(step, cls, n, count) {
  const sid = step.dataset.step;
  const label = cls === "earlier" ? "show " + count + " earlier lines" : "show later lines";
  const a = el("a", { class: "fold " + cls, href: "/api/steps/" + Number(sid) + "/log" }, label);
  a.dataset[cls === "earlier" ? "before" : "after"] = String(n);
  return a;
}

// Live lines at the end of the log (from a stream or a poll).
function appendRecords(step, recs) {
  const log = logOf(step);
  if (step.dataset.jump === "yes") return; // a gap below: "show later" fills it
  const follow = atBottom();
  const started = Number(step.dataset.started) || null;
  let last = lastN(step);
  const frag = document.createDocumentFragment();
  for (const rec of recs) {
    if (rec.n <= last) continue; // already shown (a resumed stream may repeat)
    frag.append(lineNode(step.dataset.step, started, rec));
    last = rec.n;
  }
  log.append(frag);
  step.dataset.last = String(last);
  trim(step);
  if (follow && step.open) window.scrollTo(0, document.documentElement.scrollHeight);
}

function trim(step) {
  const log = logOf(step);
  const lines = log.querySelectorAll(".l");
  const extra = lines.length - MAX_DOM_LINES;
  if (extra <= 0) return;
  for (let i = 0; i < extra; i++) lines[i].remove();
  const first = Number(lines[extra].dataset.n);
  const old = $(".fold.earlier", log);
  if (old) old.remove();
  log.prepend(foldLink(step, "earlier", first, first - 1));
}

async function fetchLines(sid, params) {
  const r = await fetch("/api/steps/" + Number(sid) + "/log/lines?" + new URLSearchParams(params), {
    cache: "no-cache",
  });
  if (!r.ok) throw new Error("log: " + r.status);
  return { recs: await r.json(), total: Number(r.headers.get("X-Log-Lines") || 0) };
}

export async function loadTail(step) {
  const sid = step.dataset.step;
  const { recs, total } = await fetchLines(sid, { tail: TAIL });
  const log = logOf(step);
  log.replaceChildren();
  step.dataset.last = "0";
  step.dataset.jump = "no";
  step.dataset.total = String(total);
  step.dataset.loaded = "yes";
  if (recs.length && recs[0].n > 1) log.append(foldLink(step, "earlier", recs[0].n, recs[0].n - 1));
  appendRecords(step, recs);
}

export async function pollNew(step) {
  if (step.dataset.jump === "yes" || step.dataset.loaded !== "yes") return;
  const { recs } = await fetchLines(step.dataset.step, { after: lastN(step), limit: 5000 });
  appendRecords(step, recs);
}

export async function showEarlier(step, link) {
  const before = Number(link.dataset.before);
  const after = Math.max(0, before - 1 - PAGE);
  const { recs } = await fetchLines(step.dataset.step, { after, limit: before - 1 - after });
  const started = Number(step.dataset.started) || null;
  const frag = document.createDocumentFragment();
  if (after > 0) frag.append(foldLink(step, "earlier", after + 1, after));
  for (const rec of recs) frag.append(lineNode(step.dataset.step, started, rec));
  link.replaceWith(frag);
}

export async function showLater(step, link) {
  const after = Number(link.dataset.after);
  const { recs, total } = await fetchLines(step.dataset.step, { after, limit: PAGE });
  const started = Number(step.dataset.started) || null;
  const frag = document.createDocumentFragment();
  let last = after;
  for (const rec of recs) {
    frag.append(lineNode(step.dataset.step, started, rec));
    last = rec.n;
  }
  if (last < total) frag.append(foldLink(step, "later", last, 0));
  link.replaceWith(frag);
  step.dataset.last = String(last);
  if (last >= total) {
    step.dataset.jump = "no";
    streamIfRunning(step);
  }
}

// A link to a line that is not shown: show the lines around it.
async function jumpTo(step, n) {
  const sid = step.dataset.step;
  const after = Math.max(0, n - 51);
  const { recs, total } = await fetchLines(sid, { after, limit: PAGE });
  const log = logOf(step);
  const started = Number(step.dataset.started) || null;
  stopStream(sid);
  log.replaceChildren();
  if (after > 0) log.append(foldLink(step, "earlier", after + 1, after));
  let last = after;
  for (const rec of recs) {
    log.append(lineNode(sid, started, rec));
    last = rec.n;
  }
  step.dataset.last = String(last);
  step.dataset.loaded = "yes";
  step.dataset.jump = last < total ? "yes" : "no";
  if (last < total) log.append(foldLink(step, "later", last, 0));
  else streamIfRunning(step);
}

export async function showTarget() {
  const m = /^#L(\d+)-(\d+)$/.exec(location.hash);
  if (!m) return;
  const step = document.getElementById("step-" + m[1]);
  if (!step) return;
  step.open = true;
  let line = document.getElementById("L" + m[1] + "-" + m[2]);
  if (!line) {
    await jumpTo(step, Number(m[2]));
    line = document.getElementById("L" + m[1] + "-" + m[2]);
  }
  for (const old of document.querySelectorAll(".l.target")) old.classList.remove("target");
  if (line) {
    line.classList.add("target");
    line.scrollIntoView({ block: "center" });
  }
}

// -- log streams (server-sent events; the browser resumes with Last-Event-ID)

const streams = new Map();
let onStepEnd = () => {};

// What to do when a streamed step ends (the run page refreshes).
export function whenStepEnds(fn) {
  onStepEnd = fn;
}

export function streaming(sid) {
  return streams.has(sid);
}

export function stopStream(sid) {
  const es = streams.get(sid);
  if (es) {
    es.close();
    streams.delete(sid);
  }
}

export function streamIfRunning(step) {
  const sid = step.dataset.step;
  if (step.dataset.state !== "running" || !step.open || step.dataset.loaded !== "yes") return;
  if (step.dataset.jump === "yes" || streams.has(sid) || streams.size >= MAX_STREAMS) return;
  const es = new EventSource("/api/steps/" + Number(sid) + "/log/stream?after=" + lastN(step));
  streams.set(sid, es);
  es.addEventListener("lines", (ev) => appendRecords(step, JSON.parse(ev.data)));
  es.addEventListener("end", () => {
    stopStream(sid);
    onStepEnd();
  });
}
