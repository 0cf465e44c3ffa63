// The playground page: the editor, its state in the URL, and the API's answers shown as they arrive.
"use strict";

const $ = (id) => document.getElementById(id);
const source = $("source");
const DEBOUNCE_MS = 250;
const DEFAULT_EXAMPLE = "affine";

let examples = [];
let diagnostics = []; // the program's errors and warnings, as the last /api/derive gave them
const pending = {}; // kind -> AbortController of the request in flight
let generation = 0; // answers to an older state of the page are dropped

// ---- state <-> URL (the fragment, so a link reproduces the page and the server never logs it) ----

function state() {
  return {
    src: source.value,
    mode: document.querySelector("input[name=mode]:checked").value,
    loss: $("loss").value.trim(),
    wrt: $("wrt").value.trim(),
    dims: $("dims").value.trim(),
    backward: $("backward").checked ? "1" : "",
  };
}

function writeURL() {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(state())) if (v) params.set(k, v);
  history.replaceState(null, "", "#" + params.toString());
}

function readURL() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has("src")) return false;
  source.value = params.get("src");
  const mode = params.get("mode") === "jvp" ? "jvp" : "grad";
  document.querySelector(`input[name=mode][value=${mode}]`).checked = true;
  $("loss").value = params.get("loss") || "";
  $("wrt").value = params.get("wrt") || "";
  $("dims").value = params.get("dims") || "";
  $("backward").checked = params.get("backward") === "1";
  return true;
}

// ---- the editor: line numbers and underlines ----

function lines(text) {
  return text.split(/\r\n|\r|\n/);
}

function drawGutter() {
  const n = lines(source.value).length;
  const worst = {};
  for (const d of diagnostics) {
    if (d.line && worst[d.line] !== "error") worst[d.line] = d.severity;
  }
  const gutter = $("gutter");
  gutter.replaceChildren();
  for (let i = 1; i <= n; i++) {
    const div = document.createElement("div");
    div.textContent = i;
    if (worst[i]) div.className = worst[i];
    gutter.appendChild(div);
  }
  source.rows = Math.max(12, n + 1);
}

// The text again, each diagnostic's span wrapped in <mark>: from its column to its end on the same
// line (one character when it has none, a space past the end of the line when it points there).
function drawMarks() {
  const rows = lines(source.value);
  const byLine = {};
  for (const d of diagnostics) {
    if (!d.line || d.line > rows.length) continue;
    const text = rows[d.line - 1];
    const start = Math.max(0, d.column - 1);
    let width = 1;
    if (d.end_line === d.line && d.end_column > d.column) width = d.end_column - d.column;
    (byLine[d.line] = byLine[d.line] || []).push({ start, end: Math.min(start + width, Math.max(text.length, start + 1)), d });
  }
  const marks = $("marks");
  marks.replaceChildren();
  rows.forEach((text, k) => {
    const spans = (byLine[k + 1] || []).sort((a, b) => a.start - b.start);
    let at = 0;
    for (const s of spans) {
      if (s.start < at) continue; // overlapping spans: the first one shows
      marks.appendChild(document.createTextNode(text.slice(at, s.start)));
      const mark = document.createElement("mark");
      mark.className = s.d.severity;
      mark.dataset.line = s.d.line;
      mark.dataset.column = s.d.column;
      mark.textContent = text.slice(s.start, s.end).padEnd(s.end - s.start, " ");
      marks.appendChild(mark);
      at = s.end;
    }
    marks.appendChild(document.createTextNode(text.slice(at) + "\n"));
  });
  syncScroll();
}

function syncScroll() {
  $("marks").scrollLeft = source.scrollLeft;
}

function where(d) {
  return d.line ? `${d.line}:${d.column}` : "";
}

function drawDiagnostics() {
  const list = $("diagnostics");
  list.replaceChildren();
  for (const d of diagnostics) {
    const li = document.createElement("li");
    li.className = d.severity;
    if (d.line) {
      const go = document.createElement("button");
      go.type = "button";
      go.textContent = where(d);
      go.title = "go to the place";
      go.addEventListener("click", () => jumpTo(d.line, d.column));
      li.appendChild(go);
    }
    li.appendChild(document.createTextNode(`${d.severity}: ${d.message}`));
    list.appendChild(li);
  }
}

function jumpTo(line, column) {
  const rows = lines(source.value);
  let offset = 0;
  for (let i = 0; i < line - 1 && i < rows.length; i++) offset += rows[i].length + 1;
  offset += Math.max(0, column - 1);
  source.focus();
  source.setSelectionRange(offset, offset);
}

function showDiagnostics(list) {
  diagnostics = list || [];
  drawGutter();
  drawMarks();
  drawDiagnostics();
}

// ---- examples ----

function markExample() {
  for (const b of document.querySelectorAll("#examples button")) {
    b.classList.toggle("active", b.dataset.source === source.value);
  }
}

async function loadExamples() {
  const reply = await fetch("/api/examples").then((r) => r.json());
  examples = reply.examples;
  const nav = $("examples");
  for (const ex of examples) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = ex.name;
    b.title = ex.title;
    b.dataset.name = ex.name;
    b.dataset.source = ex.source;
    b.addEventListener("click", () => {
      source.value = ex.source;
      $("loss").value = "";
      $("wrt").value = "";
      changed(true);
    });
    nav.appendChild(b);
  }
}

// ---- asking the server ----

async function ask(kind, body, mine) {
  if (pending[kind]) pending[kind].abort();
  const control = (pending[kind] = new AbortController());
  try {
    const response = await fetch(`/api/${kind}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: control.signal,
    });
    const reply = await response.json();
    if (mine !== generation) return null;
    if (!response.ok && !reply.diagnostics) {
      reply.diagnostics = [{ line: null, column: null, severity: "error", message: reply.error || response.statusText }];
    }
    return reply;
  } catch (e) {
    if (e.name === "AbortError" || mine !== generation) return null;
    return { diagnostics: [{ line: null, column: null, severity: "error", message: "cannot reach the playground's server" }] };
  } finally {
    if (pending[kind] === control) delete pending[kind];
    showWorking();
  }
}

function showWorking() {
  $("status").textContent = Object.keys(pending).length ? "working…" : "";
}

function typeset(el, latex) {
  if (!latex) {
    el.replaceChildren();
    return;
  }
  if (window.katex) {
    katex.render(latex, el, { displayMode: true, throwOnError: false, strict: false });
  } else {
    el.textContent = latex; // KaTeX did not load: the LaTeX itself is still right
  }
}

function failure(el, reply) {
  const p = document.createElement("p");
  p.className = "failed";
  p.textContent = (reply.diagnostics || [])
    .filter((d) => d.severity === "error")
    .map((d) => (d.line ? `${where(d)}: ${d.message}` : d.message))
    .join("\n");
  el.replaceChildren(p);
}

function hasError(reply) {
  return (reply.diagnostics || []).some((d) => d.severity === "error");
}

function update() {
  const mine = ++generation;
  const s = state();
  const base = { source: s.src };
  const wrt = s.wrt || undefined;
  const loss = s.loss || undefined;
  showWorking();
  const jvp = s.mode === "jvp";
  $("derived-title").textContent = jvp ? "Tangent (forward mode)" : "Gradient (the swap rule)";
  $("derived-cmd").textContent = jvp ? "jvp" : "grad";
  $("loss").disabled = jvp;

  const derived = ask("derive", { ...base, mode: s.mode, loss: jvp ? undefined : loss, wrt }, mine).then((r) => {
    if (!r) return;
    showDiagnostics(r.diagnostics);
    typeset($("source-math"), r.source_latex);
    typeset($("derived-math"), r.latex);
    $("derived-idx").textContent = r.idx;
    if (hasError(r)) {
      const note = document.createElement("p");
      note.className = "empty";
      note.textContent = "the program has an error: see beside it";
      $("source-math").replaceChildren(note);
      $("derived-math").replaceChildren();
    }
  });
  const drawn = ask("graph", { ...base, grad: s.backward === "1", loss, wrt }, mine).then((r) => {
    if (!r) return;
    if (hasError(r)) return failure($("graph"), r);
    $("graph").innerHTML = r.svg; // drawn by the server from the program, every text escaped
  });
  const checked = ask("check", { ...base, dims: s.dims, loss }, mine).then((r) => r && drawCheck(r));
  const costed = ask("cost", { ...base, dims: s.dims, loss, wrt }, mine).then((r) => r && drawCost(r));
  Promise.all([derived, drawn, checked, costed]).then(() => {
    if (mine === generation) delete document.body.dataset.busy; // everything shown is for this text
  });
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function table(head, numeric) {
  const t = document.createElement("table");
  const tr = t.createTHead().insertRow();
  head.forEach((h, k) => {
    const th = document.createElement("th");
    th.textContent = h;
    if (numeric.includes(k)) th.className = "num";
    tr.appendChild(th);
  });
  return t;
}

function drawCheck(r) {
  const el = $("check");
  if (hasError(r)) return failure(el, r);
  const n = r.checked;
  const verdict = document.createElement("p");
  verdict.className = "verdict " + (r.ok ? "ok" : "bad");
  verdict.textContent = `${r.ok ? "✓ passed" : "✗ FAILED"}: ${n} input${n === 1 ? "" : "s"} checked against finite differences`;
  const t = table(["input", "relative error", ""], [1]);
  const body = t.createTBody();
  for (const [name, err] of Object.entries(r.errors)) {
    const row = body.insertRow();
    cell(row, name, "stmt");
    cell(row, err.toExponential(2), "num");
    cell(row, err <= r.tolerance ? "ok" : "mismatch", err <= r.tolerance ? "" : "mismatch");
  }
  const note = document.createElement("p");
  note.className = "sizes";
  note.textContent = `random inputs, the derived gradients against symmetric differences; tolerance ${r.tolerance}`;
  el.replaceChildren(verdict, t, note);
}

const number = (v) => v.toLocaleString("en-US");

function drawCost(r) {
  const el = $("cost");
  if (hasError(r)) return failure(el, r);
  const rep = r.report;
  const sizes = document.createElement("p");
  sizes.className = "sizes";
  sizes.textContent =
    "index sizes: " + Object.entries(rep.sizes).map(([n, v]) => `${n}=${Array.isArray(v) ? v.join("|") : v}`).join(", ");
  const t = table(["line", "forward flops", "backward flops", "bwd/fwd", "statement"], [0, 1, 2, 3]);
  const body = t.createTBody();
  for (const s of rep.statements) {
    const row = body.insertRow();
    cell(row, s.line || "", "num");
    cell(row, number(s.forward_flops), "num");
    cell(row, number(s.backward_flops), "num");
    cell(row, s.ratio === null ? "–" : s.ratio.toFixed(2), "num");
    cell(row, s.statement, "stmt");
  }
  const total = body.insertRow();
  total.className = "total";
  cell(total, "total");
  cell(total, number(rep.totals.forward_flops), "num");
  cell(total, number(rep.totals.backward_flops), "num");
  cell(total, rep.totals.ratio === null ? "–" : rep.totals.ratio.toFixed(2), "num");
  cell(total, "");
  const more = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "contraction paths (indexgrad cost)";
  const pre = document.createElement("pre");
  pre.className = "idx";
  pre.textContent = r.text;
  more.append(summary, pre);
  el.replaceChildren(sizes, t, more);
}

// ---- wiring ----

let timer = null;

function changed(now) {
  document.body.dataset.busy = "1";
  drawGutter();
  markExample();
  writeURL();
  clearTimeout(timer);
  timer = setTimeout(update, now ? 0 : DEBOUNCE_MS);
}

source.addEventListener("input", () => {
  diagnostics = []; // the old places no longer fit the text
  drawMarks();
  changed(false);
});
source.addEventListener("scroll", syncScroll);
source.addEventListener("keydown", (e) => {
  if (e.key === "Tab" && !e.shiftKey && !e.ctrlKey && !e.metaKey && !e.altKey) {
    e.preventDefault(); // indent rather than leave the editor
    document.execCommand("insertText", false, "    ");
  }
});
for (const id of ["loss", "wrt", "dims"]) $(id).addEventListener("input", () => changed(false));
for (const el of document.querySelectorAll("input[name=mode], #backward")) {
  el.addEventListener("change", () => changed(true));
}
window.addEventListener("hashchange", () => {
  if (readURL()) changed(true);
});

(async () => {
  await loadExamples();
  if (!readURL()) {
    const first = examples.find((e) => e.name === DEFAULT_EXAMPLE) || examples[0];
    if (first) source.value = first.source;
  }
  changed(true);
})();
