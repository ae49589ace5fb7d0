// The dashboard: the runs table and each repository's branches, kept live.

import { getJSON, send, startLive } from "./api.js";
import { $, el, ownUrl, stateNode, timeNode } from "./dom.js";
import { duration } from "./format.js";

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

export function setupDashboard() {
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
