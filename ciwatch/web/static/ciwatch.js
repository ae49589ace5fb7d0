// ciwatch: keeps the server-rendered pages live. No framework, no build step.
// Text from the server is only ever inserted as text (textContent, text nodes);
// links are built from our own paths and numeric ids.
"use strict";

(function () {
  const POLL_MS = 1500; // how often /api/live is asked whether anything changed
  const MAX_STREAMS = 4; // log streams per page (browsers allow ~6 connections per host)
  const TAIL = 200; // lines shown when a step's log is opened
  const PAGE = 1000; // lines loaded by "show earlier" / "show later"
  const MAX_DOM_LINES = 20000; // a live log drops its oldest lines beyond this
  const FINISHED = new Set(["success", "failure", "error", "canceled", "skipped"]);
  const CLASS_OK = /^(?:(?:fg|bg)(?:1[0-5]|[0-9]|i)|a[bdius])$/;

  // -- building DOM ---------------------------------------------------------

  function ownUrl(url) {
    const s = String(url);
    if (s.startsWith("#") || (s.startsWith("/") && !s.startsWith("//"))) return s;
    throw new Error("refusing a link that is not ours: " + s);
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "href" || k === "src") node.setAttribute(k, ownUrl(v));
      else if (k === "id" || k === "title" || k.startsWith("data-")) node.setAttribute(k, String(v));
      else if (k === "hidden" || k === "open") node[k] = true;
      else throw new Error("attribute not allowed: " + k);
    }
    for (const c of children) {
      if (c !== null && c !== undefined && c !== "") node.append(c); // strings become text nodes
    }
    return node;
  }

  function $(sel, root) {
    return (root || document).querySelector(sel);
  }

  function setText(sel, text, root) {
    const n = $(sel, root);
    if (n) n.textContent = text === null || text === undefined ? "" : String(text);
  }

  // -- formatting (as ciwatch/web/webfmt.py) ---------------------------------

  function duration(s) {
    if (s === null || s === undefined) return "";
    if (s < 10) return s.toFixed(1) + "s";
    if (s < 60) return Math.floor(s) + "s";
    const m = Math.floor(s / 60);
    const sec = String(Math.floor(s) % 60).padStart(2, "0");
    return m < 60 ? m + "m" + sec + "s" : Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
  }

  function when(t) {
    if (!t) return "";
    const d = new Date(t * 1000);
    const p = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
      p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  function elapsed(t, start) {
    if (!t || !start) return "";
    let s = Math.max(0, Math.floor(t - start));
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    const ss = String(s % 60).padStart(2, "0");
    return h ? h + ":" + String(m).padStart(2, "0") + ":" + ss : m + ":" + ss;
  }

  function size(n) {
    if (!n) return "";
    if (n >= 1e9) return (n / 1e9).toFixed(1) + " GB";
    if (n >= 1e6) return Math.round(n / 1e6) + " MB";
    if (n >= 1e3) return Math.round(n / 1e3) + " kB";
    return n + " B";
  }

  function cpu(s) {
    if (s === null || s === undefined) return "";
    return "cpu " + (s < 1 ? String(Number(s.toPrecision(2))) + "s" : duration(s));
  }

  function mem(kib) {
    return kib === null || kib === undefined ? "" : "mem " + size(kib * 1024);
  }

  function timeNode(t) {
    return t ? el("time", { "data-t": t }, when(t)) : "";
  }

  function stateNode(state) {
    return el("span", { class: "state st-" + state, "data-state": state }, state);
  }

  function setState(node, state) {
    node.className = "state st-" + state;
    node.dataset.state = state;
    node.textContent = state;
  }

  // -- talking to the daemon -------------------------------------------------

  async function getJSON(url) {
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

  async function send(method, url, body) {
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

  // -- session: sign in and out, show the actions ------------------------------

  function showSession(actions, signedIn) {
    document.body.dataset.actions = actions ? "yes" : "no";
    document.body.dataset.signedIn = signedIn ? "yes" : "no";
    const show = (sel, on) => {
      const n = $(sel);
      if (n) n.hidden = !on;
    };
    show("#readonly", !actions);
    show("#signin", actions && !signedIn);
    show("#signedin", signedIn);
    show("#actions", signedIn);
    show("#trigger", signedIn);
  }

  async function checkSession() {
    try {
      const s = await getJSON("/api/session");
      showSession(s.actions, s.signed_in);
    } catch (e) {
      /* the server-rendered state stays */
    }
  }

  function setupSession() {
    const form = $("#signin");
    if (form) {
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const input = form.elements.namedItem("token");
        setText("#signin-error", "");
        try {
          await send("POST", "/api/session", { token: input.value });
          input.value = "";
          await checkSession();
        } catch (e) {
          setText("#signin-error", e.message);
        }
      });
    }
    const out = $("#signout");
    if (out) {
      out.addEventListener("click", async () => {
        await send("DELETE", "/api/session").catch(() => null);
        await checkSession();
      });
    }
  }

  // -- live: ask whether anything changed, then fetch what the page shows -----

  function startLive(refresh) {
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

  // -- the dashboard ------------------------------------------------------------

  function runRow(r) {
    return el(
      "tr",
      { class: "run", "data-run": r.id, "data-state": r.state },
      el("td", {}, stateNode(r.state)),
      el("td", {}, el("a", { class: "label", href: "/runs/" + Number(r.id) }, r.label)),
      el("td", { class: "ref" }, r.ref_name),
      el("td", { class: "commit" }, el("code", { class: "sha" }, r.short_sha), " ",
        el("span", { class: "subject" }, r.subject || "")),
      el("td", { class: "source" }, r.source),
      el("td", { class: "wait num" }, duration(r.queue_wait)),
      el("td", { class: "duration num" }, duration(r.duration)),
      el("td", { class: "attempt num" }, String(r.attempt)),
      el("td", { class: "created" }, timeNode(r.created_at)),
    );
  }

  function renderRuns(runs) {
    const table = $("#runs");
    const body = table.tBodies[0];
    const known = new Set([...body.rows].map((tr) => tr.dataset.run));
    const rows = runs.map((r) => {
      const tr = runRow(r);
      if (!known.has(String(r.id))) tr.classList.add("fresh");
      return tr;
    });
    body.replaceChildren(...rows);
    const empty = $("#no-runs");
    if (empty) empty.hidden = runs.length > 0;
  }

  function renderRepos(repos) {
    for (const repo of repos) {
      const box = [...document.querySelectorAll(".repo")].find((n) => n.dataset.repo === repo.name);
      if (!box) continue;
      const items = repo.branches.map((b) =>
        el("li", { "data-branch": b.branch }, stateNode(b.run.state), " ",
          el("a", { class: "branch", href: "/runs/" + Number(b.run.id) }, b.branch), " ",
          el("code", { class: "sha" }, b.run.short_sha), " ",
          el("span", { class: "subject" }, b.run.subject || ""), " ", timeNode(b.run.created_at)));
      if (!items.length) items.push(el("li", { class: "none muted" }, "no runs yet"));
      $(".branches", box).replaceChildren(...items);
      const img = $("img.badge", box);
      const head = repo.branches.find((b) => b.branch === repo.default_branch);
      if (img && head) {
        // A new URL when the state changes: the browser fetches the badge again.
        const src = "/badge/" + encodeURIComponent(repo.name) + ".svg?v=" + head.run.id + "-" + head.run.state;
        if (img.getAttribute("src") !== src) img.setAttribute("src", ownUrl(src));
      }
    }
  }

  function setupDashboard() {
    const table = $("#runs");
    const query = table.dataset.query;
    const refresh = async () => {
      const [page, repos] = await Promise.all([
        getJSON("/api/runs" + (query ? "?" + query : "")),
        getJSON("/api/repos"),
      ]);
      renderRuns(page.runs);
      renderRepos(repos);
    };
    const again = startLive(refresh);
    const form = $("#trigger");
    if (form) {
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const out = $("#trigger-result");
        const repo = form.elements.namedItem("repo").value;
        const branch = form.elements.namedItem("branch").value.trim();
        out.textContent = "…";
        try {
          const data = await send("POST", "/api/trigger", { repo, branch: branch || null });
          out.replaceChildren(el("a", { href: "/runs/" + Number(data.run.id) }, data.run.label), " queued");
          again();
        } catch (e) {
          out.textContent = e.message;
        }
      });
    }
  }

  // -- a step's log -----------------------------------------------------------

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

  async function loadTail(step) {
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

  async function pollNew(step) {
    if (step.dataset.jump === "yes" || step.dataset.loaded !== "yes") return;
    const { recs } = await fetchLines(step.dataset.step, { after: lastN(step), limit: 5000 });
    appendRecords(step, recs);
  }

  async function showEarlier(step, link) {
    const before = Number(link.dataset.before);
    const after = Math.max(0, before - 1 - PAGE);
    const { recs } = await fetchLines(step.dataset.step, { after, limit: before - 1 - after });
    const started = Number(step.dataset.started) || null;
    const frag = document.createDocumentFragment();
    if (after > 0) frag.append(foldLink(step, "earlier", after + 1, after));
    for (const rec of recs) frag.append(lineNode(step.dataset.step, started, rec));
    link.replaceWith(frag);
  }

  async function showLater(step, link) {
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

  async function showTarget() {
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

  function stopStream(sid) {
    const es = streams.get(sid);
    if (es) {
      es.close();
      streams.delete(sid);
    }
  }

  function streamIfRunning(step) {
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

  // -- the run page -----------------------------------------------------------

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
      } else if (step.open && step.dataset.loaded === "yes" && !streams.has(step.dataset.step)) {
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

  function setupRun() {
    const runId = Number($("#run").dataset.run);
    const refresh = async () => {
      const run = await getJSON("/api/runs/" + runId);
      updateHead(run);
      updateSteps(run);
    };
    const again = startLive(refresh);
    onStepEnd = again;
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
        if (!streams.has(step.dataset.step)) pollNew(step).catch(() => null);
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

  // -- start ------------------------------------------------------------------

  function localTimes() {
    for (const t of document.querySelectorAll("time[data-t]")) t.textContent = when(Number(t.dataset.t));
  }

  document.addEventListener("DOMContentLoaded", () => {
    localTimes();
    setupSession();
    checkSession();
    const page = document.body.dataset.page;
    if (page === "dashboard") setupDashboard();
    else if (page === "run") setupRun();
  });
})();
