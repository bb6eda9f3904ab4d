// Herald dashboard: live overview, message tabs, template preview, copying a secret. Plain JavaScript, no build step.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";
const fmt = (n) => Number(n).toLocaleString("en-US");
const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

// ---- Overview ---------------------------------------------------------------------------------------------

const RANGES = { hour: { span: 3600e3, bucket: 60e3 }, day: { span: 86400e3, bucket: 900e3 } };
let range = "hour";
let latest = null;

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function drawChart(snapshot) {
  const chart = $("#chart");
  if (!chart) return;
  const { span, bucket } = RANGES[range];
  const bars = snapshot[range] ?? [];
  const end = Math.floor(snapshot.at / bucket) * bucket + bucket;
  const slots = span / bucket;
  const start = end - slots * bucket;
  const byStart = new Map(bars.map((b) => [b.start, b]));
  const series = [];
  for (let i = 0; i < slots; i++) {
    const at = start + i * bucket;
    series.push(byStart.get(at) ?? { start: at, accepted: 0, delivered: 0, failed: 0, deferred: 0 });
  }
  const max = Math.max(1, ...series.map((b) => Math.max(b.delivered + b.deferred + b.failed, b.accepted)));
  const width = 600, height = 160, gap = 1, w = width / slots;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height + 16}`, preserveAspectRatio: "none", class: "bars" });
  series.forEach((b, i) => {
    let y = height;
    for (const kind of ["delivered", "deferred", "failed"]) {
      const h = (b[kind] / max) * height;
      if (h > 0) {
        y -= h;
        const rect = svg("rect", { x: i * w, y, width: Math.max(w - gap, 0.5), height: h, class: kind });
        const title = svg("title", {});
        title.textContent = `${new Date(b.start).toISOString().slice(11, 16)} UTC: ${b[kind]} ${kind}`;
        rect.appendChild(title);
        root.appendChild(rect);
      }
    }
  });
  const points = series.map((b, i) => `${i * w + w / 2},${height - (b.accepted / max) * height}`).join(" ");
  root.appendChild(svg("polyline", { points, class: "accepted" }));
  const label = svg("text", { x: 2, y: height + 13, class: "axis" });
  label.textContent = range === "hour" ? "60 min ago" : "24 h ago";
  root.appendChild(label);
  const now = svg("text", { x: width - 2, y: height + 13, class: "axis", "text-anchor": "end" });
  now.textContent = "now";
  root.appendChild(now);
  const peak = svg("text", { x: 2, y: 11, class: "axis" });
  peak.textContent = `${fmt(max)} / ${range === "hour" ? "min" : "15 min"}`;
  root.appendChild(peak);
  chart.replaceChildren(root);
  const delivered = series.reduce((n, b) => n + b.delivered, 0);
  const failed = series.reduce((n, b) => n + b.failed, 0);
  const rate = $("#failure-rate");
  if (rate) rate.textContent = delivered + failed === 0 ? "–" : `${((100 * failed) / (delivered + failed)).toFixed(1)}%`;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function renderRelays(relays) {
  const body = $("#relays tbody");
  if (!body) return;
  if (relays.length === 0) return;
  body.replaceChildren(...relays.map((r) => {
    const tr = document.createElement("tr");
    tr.append(cell(r.name), cell(`${r.open_sessions} open, ${r.busy_sessions} busy / ${r.max_sessions}`),
      cell(fmt(r.delivered)), cell(fmt(r.deferred)), cell(fmt(r.failed)));
    const state = document.createElement("td");
    const badge = document.createElement("span");
    // A problem that needs a person (credentials, certificate, STARTTLS) shows red; an unreachable relay amber.
    const tone = r.state === "ok" ? "delivered" : r.problem === "unreachable" ? "deferred" : "failed";
    badge.className = `badge status-${tone}`;
    badge.textContent = r.state === "ok" ? "ok" : `${r.state}: ${String(r.problem).replace("_", " ")}`;
    state.append(badge);
    tr.append(state, cell(r.last_error
      ? `${new Date(r.last_error_at).toISOString().slice(0, 19).replace("T", " ")} ${r.last_error}` : "–"));
    return tr;
  }));
}

function applySnapshot(snapshot) {
  latest = snapshot;
  for (const { status, count } of snapshot.counts) {
    const node = $(`.n[data-status="${status}"]`);
    if (node) node.textContent = fmt(count);
  }
  const total = $("#total");
  if (total) total.textContent = fmt(snapshot.total);
  renderRelays(snapshot.relays);
  drawChart(snapshot);
}

function startOverview() {
  const data = $("#overview-data");
  if (!data) return;
  applySnapshot(JSON.parse(data.textContent));
  for (const button of $$("[data-range]")) {
    button.addEventListener("click", () => {
      range = button.dataset.range;
      for (const b of $$("[data-range]")) b.setAttribute("aria-pressed", String(b === button));
      if (latest) drawChart(latest);
    });
  }
  const state = $("#live-state");
  const source = new EventSource("/events");
  source.addEventListener("overview", (event) => {
    applySnapshot(JSON.parse(event.data));
    if (state) { state.textContent = "live"; state.dataset.state = "live"; }
  });
  source.addEventListener("error", () => {
    if (state) { state.textContent = "reconnecting…"; state.dataset.state = "down"; }
  });
}

// ---- Message detail: tabs and remote images ----------------------------------------------------------------

function startTabs() {
  const tabs = $$('[role="tab"]');
  const select = (tab) => {
    for (const t of tabs) {
      const selected = t === tab;
      t.setAttribute("aria-selected", String(selected));
      t.tabIndex = selected ? 0 : -1;
      const panel = document.getElementById(t.getAttribute("aria-controls"));
      if (panel) panel.hidden = !selected;
    }
  };
  tabs.forEach((tab, i) => {
    tab.tabIndex = tab.getAttribute("aria-selected") === "true" ? 0 : -1;
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      const next = tabs[(i + step + tabs.length) % tabs.length];
      select(next);
      next.focus();
    });
  });
  const images = $("#load-images");
  if (images) {
    images.addEventListener("click", () => {
      $("#preview").src = images.dataset.src;
      images.disabled = true;
      images.textContent = "Remote images loaded";
    });
  }
}

// ---- Template editor: live preview -------------------------------------------------------------------------

function startEditor() {
  const editor = $("#editor");
  if (!editor) return;
  const name = editor.dataset.name;
  const fields = ["subject", "text", "html", "data"].map((id) => document.getElementById(id));
  const [subject, text, html, data] = fields;
  const key = `herald.sample.${name}`;
  const saved = localStorage.getItem(key);
  if (saved) data.value = saved;
  const error = $("#template-error");
  const state = $("#preview-state");
  let timer = null;
  let generation = 0;

  async function preview() {
    const mine = ++generation;
    localStorage.setItem(key, data.value);
    state.textContent = "rendering…";
    let response;
    try {
      response = await fetch(`/templates/${encodeURIComponent(name)}/preview`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify({ subject: subject.value, text: text.value, html: html.value, data: data.value }),
      });
    } catch (e) {
      state.textContent = "offline";
      return;
    }
    if (mine !== generation) return;
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      for (const field of fields) field.removeAttribute("aria-invalid");
      error.hidden = true;
      error.textContent = "";
      $("#preview-subject").textContent = body.subject;
      $("#preview-text").textContent = body.text;
      $("#preview-html").srcdoc = body.html ?? "<p style=\"font-family:sans-serif;color:#666\">No HTML part.</p>";
      state.textContent = "up to date";
    } else {
      const e = body.error ?? { message: `HTTP ${response.status}` };
      const where = e.part ? `${e.part}${e.line ? `, line ${e.line}${e.column ? `, column ${e.column}` : ""}` : ""}: ` : "";
      error.textContent = `${where}${e.message}`;
      const target = document.getElementById(["subject", "text", "html"].includes(e.part) ? e.part : e.field);
      // The line itself, with a caret under the column, when the error is in this template's source.
      if (target && e.line && (!e.template || e.template === name)) {
        const source = target.value.split("\n")[e.line - 1];
        if (source !== undefined) {
          const snippet = document.createElement("pre");
          snippet.className = "snippet";
          snippet.textContent = `${e.line} | ${source}` + (e.column ? `\n${" ".repeat(String(e.line).length + 3 + e.column - 1)}^` : "");
          error.append(snippet);
        }
        markLine(target, e.line);
      }
      error.hidden = false;
      state.textContent = "error";
    }
  }

  for (const field of fields) {
    field.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(preview, 250);
    });
  }
  preview();
}

// Marks the textarea with the error (until a preview succeeds) without stealing focus from where the author
// types; the message above the Save button says which line.
function markLine(textarea, line) {
  textarea.setAttribute("aria-invalid", "true");
  textarea.dataset.errorLine = line;
}

// "Copy" beside a secret shown once: selects it (so Ctrl+C works whatever happens) and copies it where the
// browser allows the clipboard.
function startCopy() {
  for (const button of $$("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      field.select();
      try {
        await navigator.clipboard.writeText(field.value);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  startOverview();
  startTabs();
  startEditor();
  startCopy();
});
