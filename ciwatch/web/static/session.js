// The session: sign in and out, show the actions.

import { getJSON, send } from "./api.js";
import { $, setText } from "./dom.js";

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

export async function checkSession() {
  try {
    const s = await getJSON("/api/session");
    showSession(s.actions, s.signed_in);
  } catch (e) {
    /* the server-rendered state stays */
  }
}

export function setupSession() {
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
