// Building DOM. Text from the server is only ever inserted as text (textContent,
// text nodes); links are built from our own paths and numeric ids.

import { when } from "./format.js";

export function ownUrl(url) {
  const s = String(url);
  if (s.startsWith("#") || (s.startsWith("/") && !s.startsWith("//"))) return s;
  throw new Error("refusing a link that is not ours: " + s);
}

export function el(tag, props, ...children) {
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

export function $(sel, root) {
  return (root || document).querySelector(sel);
}

export function setText(sel, text, root) {
  const n = $(sel, root);
  if (n) n.textContent = text === null || text === undefined ? "" : String(text);
}

export function timeNode(t) {
  return t ? el("time", { "data-t": t }, when(t)) : "";
}

export function stateNode(state) {
  return el("span", { class: "state st-" + state, "data-state": state }, state);
}

export function setState(node, state) {
  node.className = "state st-" + state;
  node.dataset.state = state;
  node.textContent = state;
}
