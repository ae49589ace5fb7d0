// ciwatch: keeps the server-rendered pages live. No framework, no build step:
// ES modules, one concern each, which the pages load with <script type="module">.

import { setupDashboard } from "./dashboard.js";
import { when } from "./format.js";
import { setupRun } from "./run.js";
import { checkSession, setupSession } from "./session.js";

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
