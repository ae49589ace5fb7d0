// Numbers and times as the pages show them (as ciwatch/web/webfmt.py).

export function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 10) return s.toFixed(1) + "s";
  if (s < 60) return Math.floor(s) + "s";
  const m = Math.floor(s / 60);
  const sec = String(Math.floor(s) % 60).padStart(2, "0");
  return m < 60 ? m + "m" + sec + "s" : Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
}

export function when(t) {
  if (!t) return "";
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
    p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
}

export function elapsed(t, start) {
  if (!t || !start) return "";
  let s = Math.max(0, Math.floor(t - start));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? h + ":" + String(m).padStart(2, "0") + ":" + ss : m + ":" + ss;
}

export function size(n) {
  if (!n) return "";
  if (n >= 1e9) return (n / 1e9).toFixed(1) + " GB";
  if (n >= 1e6) return Math.round(n / 1e6) + " MB";
  if (n >= 1e3) return Math.round(n / 1e3) + " kB";
  return n + " B";
}

export function cpu(s) {
  if (s === null || s === undefined) return "";
  return "cpu " + (s < 1 ? String(Number(s.toPrecision(2))) + "s" : duration(s));
}

export function mem(kib) {
  return kib === null || kib === undefined ? "" : "mem " + size(kib * 1024);
}
