// The run page: its head, its steps by attempt and cell, and the actions.

import { getJSON, send, startLive } from "./api.js";
import { $, el, setState, setText, stateNode, timeNode } from "./dom.js";
import { cpu, duration, mem, size } from "./format.js";
import {
  loadTail,
  pollNew,
  showEarlier,
  showLater,
  showTarget,
  stopStream,
  streamIfRunning,
  streaming,
  whenStepEnds,
} from "./steplog.js";

const FINISHED = new Set(["success", "failure", "error", "canceled", "skipped"]);

// Why a step ended, when the exit code alone does not say it.
function stepReason(s) {
  if (s.state === "success" || s.state === "running") return "";
  return s.reason === "exit code " + s.exit_code ? "" : s.reason;
}

function stepSummary(s) {
  return el("summary", {}, stateNode(s.state), " ", el("span", { class: "name" }, s.name), " ",
    el("span", { class: "meta" },
      el("span", { class: "duration" }, duration(s.duration)), " ",
      el("span", { class: "exit" }, s.exit_code === null ? "" : "exit " + s.exit_code), " ",
      el("span", { class: "reason" }, stepReason(s)), " ",
      el("span", { class: "cpu" }, cpu(s.cpu_seconds)), " ",
      el("span", { class: "mem" }, mem(s.max_rss_kib))));
}

function stepBlock(s) {
  const sid = Number(s.id);
  return el("details",
    { class: "step", id: "step-" + sid, "data-step": sid, "data-state": s.state,
      "data-started": s.started_at || "", "data-total": 0, "data-loaded": "no" },
    stepSummary(s),
    el("div", { class: "logbar" },
      el("a", { class: "raw", href: "/api/steps/" + sid + "/log" }, "raw"), " ",
      el("a", { class: "download", href: "/api/steps/" + sid + "/log?download=1" }, "download"), " ",
      el("span", { class: "size" }, size(s.log_bytes))),
    el("div", { class: "log", id: "log-" + sid }));
}

function updateStep(step, s) {
  const was = step.dataset.state;
  step.dataset.state = s.state;
  step.dataset.started = s.started_at || "";
  setState($("summary .state", step), s.state);
  setText(".meta .duration", duration(s.duration), step);
  setText(".meta .exit", s.exit_code === null ? "" : "exit " + s.exit_code, step);
  setText(".meta .reason", stepReason(s), step);
  setText(".meta .cpu", cpu(s.cpu_seconds), step);
  setText(".meta .mem", mem(s.max_rss_kib), step);
  setText(".logbar .size", size(s.log_bytes) + (s.log_truncated ? " (truncated)" : ""), step);
  return was;
}

function section(parent, cls, key, value, title, atTop) {
  let node = [...parent.children].find((n) => n.classList.contains(cls) && n.dataset[key] === value);
  if (!node) {
    node = el("section", { class: cls, ["data-" + key]: value });
    if (title !== null) node.append(el(cls === "cell" ? "h3" : "h2", { class: cls + "-name" }, title));
    if (atTop) parent.prepend(node);
    else parent.append(node);
  }
  return node;
}

function updateSteps(run) {
  const box = $("#steps");
  const latest = run.steps.reduce((m, s) => Math.max(m, s.attempt), 0);
  const multiCell = run.cells.length > 1 || run.cells[0] !== "";
  const multiAttempt = new Set(run.steps.map((s) => s.attempt)).size > 1;
  if (run.steps.length) {
    const none = $("#no-steps");
    if (none) none.remove();
  }
  for (const s of run.steps) {
    let step = document.getElementById("step-" + Number(s.id));
    let was = null;
    if (!step) {
      const att = section(box, "attempt", "attempt", String(s.attempt),
        multiAttempt ? "attempt " + s.attempt : null, true);
      const cell = section(att, "cell", "cell", s.cell, multiCell ? s.cell : null, false);
      step = stepBlock(s);
      cell.append(step);
      step.addEventListener("toggle", () => onToggle(step));
    } else {
      was = updateStep(step, s);
    }
    const mine = s.attempt === latest;
    const wantOpen = mine && (s.state === "running" || s.state === "failure" || s.state === "error");
    if (wantOpen && !step.open && step.dataset.userToggled !== "yes") {
      step.dataset.auto = "yes";
      step.open = true; // the toggle handler loads the log
    } else if (step.open && step.dataset.loaded === "yes" && !streaming(step.dataset.step)) {
      if (s.state === "running" || was === "running") pollNew(step).catch(() => null);
    }
    streamIfRunning(step);
  }
}

function updateHead(run) {
  const head = $("#run");
  head.dataset.state = run.state;
  setState($("h1 .state", head), run.state);
  document.title = run.label + " " + run.state + " · ciwatch";
  setText("#subject", run.subject || "");
  const setTime = (sel, t) => $(sel).replaceChildren(timeNode(t));
  setTime("#started", run.started_at);
  setTime("#finished", run.finished_at);
  setText("#queue-wait", duration(run.queue_wait));
  setText("#duration", duration(run.duration));
  setText("#attempt", String(run.attempt));
  const finished = FINISHED.has(run.state);
  const stop = run.cancel_requested && !finished ? " (stop asked: " + run.cancel_requested + ")" : "";
  setText("#reason", run.reason + stop);
  const cancel = $('[data-action="cancel"]');
  const retry = $('[data-action="retry"]');
  if (cancel) cancel.hidden = finished;
  if (retry) retry.hidden = !finished;
  if (finished && $("#action-result") && $("#action-result").textContent === "cancel asked") {
    setText("#action-result", "");
  }
  const why = $("#why");
  why.hidden = run.state !== "queued";
  setText("#wait-reason", run.wait_reason || "for the scheduler");
  setText("#why-lines", run.why.join("\n"));
}

function onToggle(step) {
  if (!step.dataset.auto) step.dataset.userToggled = "yes";
  delete step.dataset.auto;
  if (!step.open) {
    stopStream(step.dataset.step);
    return;
  }
  if (step.dataset.loaded !== "yes") {
    loadTail(step).then(() => streamIfRunning(step)).catch(() => null);
  } else {
    streamIfRunning(step);
  }
}

export function setupRun() {
  const runId = Number($("#run").dataset.run);
  const refresh = async () => {
    const run = await getJSON("/api/runs/" + runId);
    updateHead(run);
    updateSteps(run);
  };
  const again = startLive(refresh);
  whenStepEnds(again);
  for (const step of document.querySelectorAll("details.step")) {
    const lines = step.querySelectorAll(".l");
    step.dataset.last = lines.length ? lines[lines.length - 1].dataset.n : "0";
    step.addEventListener("toggle", () => onToggle(step));
    streamIfRunning(step);
  }
  $("#steps").addEventListener("click", (ev) => {
    const link = ev.target.closest("a.fold");
    if (!link) return;
    ev.preventDefault();
    const step = link.closest("details.step");
    const load = link.classList.contains("earlier") ? showEarlier : showLater;
    load(step, link).catch(() => null);
  });
  window.addEventListener("hashchange", () => showTarget().catch(() => null));
  showTarget().catch(() => null);
  for (const b of document.querySelectorAll("#actions [data-action]")) {
    b.addEventListener("click", async () => {
      const what = b.dataset.action;
      const out = $("#action-result");
      out.textContent = "…";
      try {
        const data = await send("POST", "/api/runs/" + runId + "/" + what);
        if (what === "retry") {
          location.assign("/runs/" + Number(data.run.id));
          return;
        }
        out.textContent = "cancel asked";
        again();
      } catch (e) {
        out.textContent = e.message;
      }
    });
  }
  // Open running steps beyond the streams a page may hold are polled.
  setInterval(() => {
    if (document.hidden) return;
    for (const step of document.querySelectorAll('details.step[open][data-state="running"]')) {
      if (!streaming(step.dataset.step)) pollNew(step).catch(() => null);
    }
  }, 2000);
  // Running times tick between updates.
  setInterval(() => {
    const head = $("#run");
    if (head.dataset.state !== "running") return;
    const started = $("#started time");
    if (started) setText("#duration", duration(Date.now() / 1000 - Number(started.dataset.t)));
  }, 1000);
}
