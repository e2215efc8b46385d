// HarmonyLite admin dashboard: refreshes the page's values from its JSON twin (<body data-api>)
// every 2 seconds, without reloading. Conventions in the templates:
//   data-f="a.b"          text of the value at that path (null → —, booleans → yes/no,
//                         arrays joined); data-yes / data-no relabel booleans;
//                         data-hide-empty hides the element while the value is null or empty
//   data-ok="a.b[=v]"     class ok/bad by truthiness (or equality with v)
//   data-list="a.b"       container whose rows are rebuilt from the array at that path with
//                         <template id=data-row>; inside a row data-k / data-kok are relative
//   data-progress="a.b"   <progress> whose value is that number; hidden while it is null
//   data-chart="/x.svg"   container whose SVG is reloaded
// Values are written with textContent only; nothing from the API is parsed as HTML.
"use strict";
(function () {
  const REFRESH_MS = 2000;
  const body = document.body;
  const api = body.dataset.api;
  const csrf = body.dataset.csrf;

  function get(obj, path) {
    if (path === "") return obj;
    return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
  }

  function fmt(v, el) {
    if (v === null || v === undefined || v === "") return el && el.dataset.hideEmpty !== undefined ? "" : "—";
    if (typeof v === "boolean") {
      if (el && el.dataset.yes !== undefined) return v ? el.dataset.yes : el.dataset.no;
      return v ? "yes" : "no";
    }
    if (Array.isArray(v)) return v.length ? v.map((x) => fmt(x)).join(", ") : "—";
    return String(v);
  }

  function okState(el, spec, data) {
    const [path, want] = spec.split("=");
    const v = get(data, path);
    const ok = want === undefined ? Boolean(v) : String(v) === want;
    el.classList.toggle("ok", ok);
    el.classList.toggle("bad", !ok);
  }

  function fill(root, data, fieldAttr, okAttr) {
    root.querySelectorAll("[" + fieldAttr + "]").forEach((el) => {
      if (el.closest("template")) return;
      const v = get(data, el.getAttribute(fieldAttr));
      const text = fmt(v, el);
      if (el.textContent !== text) el.textContent = text;
      if (el.dataset.hideEmpty !== undefined) el.hidden = text === "";
    });
    root.querySelectorAll("[" + okAttr + "]").forEach((el) => okState(el, el.getAttribute(okAttr), data));
  }

  function progressBars(data) {
    document.querySelectorAll("progress[data-progress]").forEach((el) => {
      const v = get(data, el.dataset.progress);
      el.hidden = typeof v !== "number";
      if (typeof v === "number") el.value = v;
    });
  }

  function lists(data) {
    document.querySelectorAll("[data-list]").forEach((container) => {
      const items = get(data, container.dataset.list);
      const tpl = document.getElementById(container.dataset.row);
      if (!tpl) return;
      const rows = [];
      if (Array.isArray(items) && items.length) {
        items.forEach((item) => {
          const row = tpl.content.firstElementChild.cloneNode(true);
          const wrap = document.createElement("div");
          wrap.appendChild(row);
          fill(wrap, item, "data-k", "data-kok");
          if (item && item.this_node) row.classList.add("this");
          rows.push(row);
        });
      } else if (container.dataset.empty) {
        const cols = tpl.content.firstElementChild.children.length || 1;
        const row = document.createElement(container.tagName === "TBODY" ? "tr" : "li");
        row.className = "empty";
        const cell = document.createElement(container.tagName === "TBODY" ? "td" : "span");
        if (container.tagName === "TBODY") cell.colSpan = cols;
        cell.textContent = container.dataset.empty;
        row.appendChild(cell);
        rows.push(row);
      }
      container.replaceChildren(...rows);
    });
  }

  async function refreshChart() {
    const box = document.querySelector("[data-chart]");
    if (!box) return;
    const res = await fetch(box.dataset.chart, { headers: { Accept: "image/svg+xml" } });
    if (!res.ok) return;
    // Our own server-rendered SVG: numbers and fixed labels only.
    const doc = new DOMParser().parseFromString(await res.text(), "image/svg+xml");
    const svg = doc.documentElement;
    if (svg && svg.nodeName === "svg") box.replaceChildren(document.importNode(svg, true));
  }

  const live = document.getElementById("live");
  const stamp = document.getElementById("refreshed");
  async function refresh() {
    if (document.hidden) return;
    try {
      const res = await fetch(api, { headers: { Accept: "application/json" } });
      if (res.status === 401) { window.location.href = "/login"; return; }
      if (!res.ok) throw new Error("HTTP " + res.status);
      const data = await res.json();
      fill(document, data, "data-f", "data-ok");
      progressBars(data);
      lists(data);
      await refreshChart();
      live.classList.remove("stale");
      live.textContent = "live";
      stamp.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
      body.dataset.refreshes = String(Number(body.dataset.refreshes || 0) + 1);
    } catch (e) {
      live.classList.add("stale");
      live.textContent = "offline";
      stamp.textContent = "Refresh failed: " + e.message;
    }
  }

  // The snapshot action: POST the JSON twin with the CSRF token, show the answer in place.
  const form = document.getElementById("snapshot-form");
  if (form) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = document.getElementById("outcome");
      out.textContent = "Sending…";
      try {
        const res = await fetch(form.dataset.action, { method: "POST", headers: { "X-CSRF-Token": csrf } });
        let msg = res.status === 202 ? "Snapshot started." : "HTTP " + res.status;
        try {
          const j = await res.json();
          if (j.error) msg = j.error; else if (j.message) msg = j.message;
        } catch (_) { /* empty body */ }
        out.textContent = msg;
        out.dataset.status = String(res.status);
        // Show the progress at once rather than at the next tick.
        if (api) await refresh();
      } catch (e) {
        out.textContent = "Request failed: " + e.message;
      }
    });
  }

  if (api) {
    setInterval(refresh, REFRESH_MS);
    document.addEventListener("visibilitychange", refresh);
  } else if (live) {
    live.hidden = true;
  }
})();
