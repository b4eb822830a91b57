// evalharness report: renders the JSON blob in the script element "report-data". Model outputs and judge texts are
// untrusted: every piece of data reaches the page through textContent (el() below), never innerHTML, and no
// data becomes an href. Rows are rendered one page at a time, so 10 models x 805 items open quickly.
"use strict";
(function () {
  const started = performance.now();
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const parsed = performance.now();
  const PAGE = 50;
  const app = document.getElementById("app");

  // el("tag.class", text or [children]): the one way this script builds DOM; text goes in as textContent.
  function el(spec, content) {
    const [tag, ...classes] = spec.split(".");
    const node = document.createElement(tag);
    if (classes.length) node.className = classes.join(" ");
    if (content === undefined || content === null) return node;
    if (Array.isArray(content)) content.forEach((c) => c && node.appendChild(typeof c === "string" ? text(c) : c));
    else if (content instanceof Node) node.appendChild(content);
    else node.textContent = String(content);
    return node;
  }
  function text(s) { return document.createTextNode(String(s)); }
  function fmt(x, d) { return x === null || x === undefined ? "—" : Number(x).toFixed(d === undefined ? 2 : d); }
  function section(title, id) {
    const s = el("section", [el("h2", title)]);
    s.id = id;
    app.appendChild(s);
    return s;
  }
  function option(select, value, label) {
    const o = el("option", label);
    o.value = String(value);
    select.appendChild(o);
    return o;
  }
  function control(label, node) { return el("label.control", [label + " ", node]); }

  // ------------------------------------------------------------ header and table
  app.textContent = "";
  app.appendChild(el("h1", "evalharness report"));
  app.appendChild(el("p.meta", "Generated " + DATA.generated_at + " from " + DATA.refs.join(", ") +
    ". Self-contained: no network, no server."));

  const tsec = section("Comparison", "comparison");
  const t = DATA.table;
  const table = el("table.comparison");
  const head = el("tr", [el("th", "model"), el("th", "algorithm"), el("th", "setting"), el("th", "step")]);
  t.columns.forEach((c) => {
    head.appendChild(el("th", c.label + (c.arrow ? " " + c.arrow : "")));
    if (DATA.against !== null) head.appendChild(el("th", "Δ " + c.label));
  });
  table.appendChild(el("thead", head));
  const tbody = el("tbody");
  t.rows.forEach((r, i) => {
    const tr = el("tr" + (i === DATA.against ? ".reference" : "") + (DATA.best && i === DATA.best.row ? ".best" : ""),
      [el("td", r.label), el("td", r.algorithm), el("td", r.setting), el("td", r.step === null ? "" : String(r.step))]);
    r.cells.forEach((c) => {
      const v = el("td.num", c.value);
      if (c.skipped) v.appendChild(el("span.skipped", " (" + c.skipped + " skipped)"));
      tr.appendChild(v);
      if (DATA.against !== null) tr.appendChild(el("td.num" + (c.sig ? ".sig" : ""), c.delta));
    });
    tbody.appendChild(tr);
  });
  table.appendChild(tbody);
  tsec.appendChild(el("div.scroll", table));
  t.notes.forEach((n) => tsec.appendChild(el("p.note", n)));
  if (DATA.best) {
    const b = DATA.best, d = b.paired_delta;
    tsec.appendChild(el("p.verdict", "Best checkpoint on " + b.metric + ": " + b.best_model + " — Δ " + fmt(d.delta, 3) +
      " [" + fmt(d.ci_low, 3) + ", " + fmt(d.ci_high, 3) + "] over " + d.n_prompts + " items; Holm over " +
      b.k_checkpoints + " checkpoints p = " + Number(b.p_holm_over_checkpoints).toPrecision(2) + ": " +
      (b.beats_sft ? "beats the reference" : "does NOT clearly beat the reference")));
  }

  // ------------------------------------------------------------ methods across training seeds (analysis.methods)
  function grid(g) {
    const gt = el("table.comparison");
    gt.appendChild(el("thead", el("tr", g.head.map((h) => el("th", h)))));
    gt.appendChild(el("tbody", g.body.map((r) => el("tr", r.map((c, k) => el(k ? "td.num" : "td", c))))));
    return el("div.scroll", gt);
  }
  if (DATA.methods) {
    const msec = section("Methods (across training seeds)", "methods");
    msec.appendChild(grid(DATA.methods.means));
    if (DATA.methods.differences) msec.appendChild(grid(DATA.methods.differences));
    DATA.methods.lines.forEach((n) => msec.appendChild(el("p.note", n)));
  }

  // ------------------------------------------------------------ figures
  const fsec = section("Figures", "figures");
  const IMG = /^data:image\/(svg\+xml|png);base64,[A-Za-z0-9+/=]+$/;
  DATA.figures.forEach((f) => {
    const fig = el("figure", [el("figcaption", f.title)]);
    if (IMG.test(f.uri)) {  // only the report's own images: a data: URI of an SVG or PNG (CSP: img-src data:)
      const img = el("img");
      img.src = f.uri;
      img.alt = f.title;
      fig.insertBefore(img, fig.firstChild);
    }
    if (f.note) fig.appendChild(el("p.note", f.note));
    fsec.appendChild(fig);
  });
  DATA.figure_notes.forEach((n) => fsec.appendChild(el("p.note", n)));
  if (!DATA.figures.length) fsec.appendChild(el("p.note", "No figure for these entries."));

  // ------------------------------------------------------------ failed and unparsed judgments, counted
  const csec = section("Judgments that failed or did not parse", "failures");
  const ctable = el("table.counts");
  ctable.appendChild(el("thead", el("tr", [el("th", "task"), el("th", "model"), el("th", "judgments"),
    el("th", "failed (error)"), el("th", "unparsed")])));
  const cbody = el("tbody");
  Object.entries(DATA.tasks).forEach(([name, task]) => {
    task.items.forEach((items, m) => {
      let n = 0, failed = 0, unparsed = 0;
      Object.values(items).forEach((it) => { n += it.judgments.length; failed += it.failed; unparsed += it.unparsed; });
      if (!n && !Object.keys(items).length) return;
      cbody.appendChild(el("tr" + (failed || unparsed ? ".warn" : ""), [el("td", name), el("td", DATA.models[m].label),
        el("td.num", String(n)), el("td.num", String(failed)), el("td.num", String(unparsed))]));
    });
  });
  ctable.appendChild(cbody);
  csec.appendChild(ctable);

  // ------------------------------------------------------------ the judge's own reliability (never a model metric)
  if ((DATA.judge_reliability || []).length) {
    const rsec = section("Judge reliability", "judge-reliability");
    const metrics = [["position_consistency", "position consistency"], ["repeat_agreement", "repeat agreement"],
      ["repeat_kappa", "repeat κ"], ["parse_failure_rate", "unparsed"], ["error_rate", "failed"]];
    const rtable = el("table.counts");
    rtable.appendChild(el("thead", el("tr", [el("th", "model"), el("th", "task"), el("th", "judge")]
      .concat(metrics.map(([, label]) => el("th", label))))));
    const rbody = el("tbody");
    DATA.judge_reliability.forEach((r) => {
      const cells = metrics.map(([m]) => el("td.num", r[m] && r[m][0] !== null
        ? fmt(r[m][0]) + " [" + fmt(r[m][1]) + ", " + fmt(r[m][2]) + "] n=" + r[m][3] : "—"));
      rbody.appendChild(el("tr", [el("td", r.model), el("td", r.task), el("td", r.judge)].concat(cells)));
    });
    rtable.appendChild(rbody);
    rsec.appendChild(rtable);
    rsec.appendChild(el("p.note", "Describes the judge, not the model (never gated); 95% CIs over items."));
  }

  // ------------------------------------------------------------ per-prompt viewer
  const vsec = section("Per-prompt viewer", "viewer");
  const taskNames = Object.keys(DATA.tasks);
  const sel = {};
  ["task", "a", "b", "sort", "category", "verdict"].forEach((k) => { sel[k] = el("select"); sel[k].id = "viewer-" + k; });
  taskNames.forEach((n) => option(sel.task, n, n));
  DATA.models.forEach((m, i) => { option(sel.a, i, m.label); option(sel.b, i, m.label); });
  sel.a.value = String(DATA.default_a);
  sel.b.value = String(DATA.default_b);
  [["flip", "flipped first, then |Δ|"], ["absdiff", "|Δ| largest first"], ["diff-desc", "Δ largest first"],
   ["diff-asc", "Δ smallest first"], ["item", "item order"]].forEach(([v, l]) => option(sel.sort, v, l));
  [["all", "any verdict"], ["b-better", "B scores higher"], ["a-better", "A scores higher"], ["equal", "equal scores"],
   ["flipped", "flipped verdict"], ["failed", "failed or unparsed judgment"], ["one-side", "answered by one model only"]]
    .forEach(([v, l]) => option(sel.verdict, v, l));
  const search = el("input");
  search.id = "viewer-search";
  search.type = "search";
  search.placeholder = "search prompts, answers, judge texts";
  vsec.appendChild(el("div.controls", [control("task", sel.task), control("model A", sel.a), control("model B", sel.b),
    control("sort", sel.sort), control("category", sel.category), control("verdict", sel.verdict),
    control("search", search)]));
  const summary = el("p.summary");
  summary.id = "viewer-summary";
  vsec.appendChild(summary);
  const list = el("table.items");
  list.appendChild(el("thead", el("tr", ["#", "prompt", "category", "score A", "score B", "Δ (B − A)", "len A", "len B",
    "judgments"].map((h) => el("th", h)))));
  const rowsBody = el("tbody");
  rowsBody.id = "viewer-rows";
  list.appendChild(rowsBody);
  vsec.appendChild(el("div.scroll", list));
  const pager = el("div.pager");
  const prev = el("button", "◀ previous"), next = el("button", "next ▶"), pageInfo = el("span.page");
  prev.id = "viewer-prev"; next.id = "viewer-next"; pageInfo.id = "viewer-page";
  pager.appendChild(prev); pager.appendChild(pageInfo); pager.appendChild(next);
  vsec.appendChild(pager);

  let rows = [], page = 0, lastTask = null;

  function refreshCategories() {
    const task = DATA.tasks[sel.task.value];
    const cats = Array.from(new Set(Object.values(task.prompts).map((p) => p.category).filter(Boolean))).sort();
    sel.category.textContent = "";
    option(sel.category, "", "any category");
    cats.forEach((c) => option(sel.category, c, c));
  }

  function joined(item) {
    if (!item) return "";
    return item.answers.map((a) => a.text).concat(item.judgments.map((j) => j.raw || j.error || "")).join("\n");
  }

  function compute() {
    const name = sel.task.value, task = DATA.tasks[name];
    if (name !== lastTask) { refreshCategories(); lastTask = name; }
    const A = task.items[Number(sel.a.value)] || {}, B = task.items[Number(sel.b.value)] || {};
    const units = Array.from(new Set(Object.keys(task.prompts).concat(Object.keys(A), Object.keys(B))))
      .filter((u) => A[u] || B[u]);
    const q = search.value.trim().toLowerCase(), cat = sel.category.value, verdict = sel.verdict.value;
    const f = task.flip_at;
    let failedA = 0, failedB = 0, unparsedA = 0, unparsedB = 0;
    const all = units.map((u, k) => {
      const a = A[u], b = B[u], p = task.prompts[u] || {text: [], category: ""};
      const sa = a ? a.score : null, sb = b ? b.score : null;
      const diff = sa !== null && sb !== null ? sb - sa : null;
      const flipped = f !== null && f !== undefined && diff !== null && (sa - f) * (sb - f) < 0;
      if (a) { failedA += a.failed; unparsedA += a.unparsed; }
      if (b) { failedB += b.failed; unparsedB += b.unparsed; }
      return {unit: u, order: k, a: a, b: b, prompt: p, diff: diff, flipped: flipped,
              bad: (a ? a.failed + a.unparsed : 0) + (b ? b.failed + b.unparsed : 0)};
    });
    rows = all.filter((r) => {
      if (cat && r.prompt.category !== cat) return false;
      if (verdict === "b-better" && !(r.diff > 0)) return false;
      if (verdict === "a-better" && !(r.diff < 0)) return false;
      if (verdict === "equal" && r.diff !== 0) return false;
      if (verdict === "flipped" && !r.flipped) return false;
      if (verdict === "failed" && !r.bad) return false;
      if (verdict === "one-side" && r.a && r.b) return false;
      if (q) {
        const hay = (r.unit + "\n" + r.prompt.text.join("\n") + "\n" + joined(r.a) + "\n" + joined(r.b)).toLowerCase();
        if (!hay.includes(q)) return false;
      }
      return true;
    });
    const mag = (r) => (r.diff === null ? -1 : Math.abs(r.diff));
    const sorts = {
      flip: (x, y) => (y.flipped - x.flipped) || (mag(y) - mag(x)) || (x.order - y.order),
      absdiff: (x, y) => (mag(y) - mag(x)) || (x.order - y.order),
      "diff-desc": (x, y) => ((y.diff ?? -Infinity) - (x.diff ?? -Infinity)) || (x.order - y.order),
      "diff-asc": (x, y) => ((x.diff ?? Infinity) - (y.diff ?? Infinity)) || (x.order - y.order),
      item: (x, y) => x.order - y.order,
    };
    rows.sort(sorts[sel.sort.value]);
    page = 0;
    summary.textContent = rows.length + " of " + all.length + " items shown. Failed judgments: A " + failedA + ", B " +
      failedB + "; unparsed: A " + unparsedA + ", B " + unparsedB + ". Per-item score: the mean of a model's " +
      "ok judgments on the item" + (f !== null && f !== undefined ? " (percent; flipped: one side above " + f +
      ", the other below)" : "") + ".";
    render();
  }

  function badges(item) {
    const span = el("span.badges");
    if (!item) { span.appendChild(el("span.badge.missing", "missing")); return span; }
    const counts = {};
    item.judgments.forEach((j) => { counts[j.status] = (counts[j.status] || 0) + 1; });
    Object.entries(counts).forEach(([s, n]) => span.appendChild(el("span.badge." + s, s + " " + n)));
    return span;
  }

  function render() {
    rowsBody.textContent = "";
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    pageInfo.textContent = " page " + (page + 1) + " of " + pages + " ";
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    rows.slice(page * PAGE, (page + 1) * PAGE).forEach((r, k) => {
      const first = r.prompt.text[0] || r.unit;
      const tr = el("tr.item-row" + (r.flipped ? ".flipped" : "") + (r.bad ? ".bad" : ""), [
        el("td.num", String(page * PAGE + k + 1)), el("td.prompt", first.length > 140 ? first.slice(0, 140) + "…" : first),
        el("td", r.prompt.category || ""), el("td.num", fmt(r.a && r.a.score)), el("td.num", fmt(r.b && r.b.score)),
        el("td.num", r.diff === null ? "—" : (r.diff > 0 ? "+" : "") + fmt(r.diff)),
        el("td.num", r.a && r.a.chars !== null ? String(Math.round(r.a.chars)) : "—"),
        el("td.num", r.b && r.b.chars !== null ? String(Math.round(r.b.chars)) : "—"),
        el("td", [el("span", "A "), badges(r.a), el("span", " B "), badges(r.b)])]);
      tr.tabIndex = 0;
      tr.addEventListener("click", () => toggle(tr, r));
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") toggle(tr, r); });
      rowsBody.appendChild(tr);
    });
  }

  function side(label, model, item) {
    const col = el("div.side", [el("h4", label + ": " + model.label)]);
    if (!item) { col.appendChild(el("p.missing", "No answer or judgment for this item.")); return col; }
    item.answers.forEach((a) => {
      col.appendChild(el("div.answer-head", a.request + (a.sample ? " sample " + a.sample : "") + " — " +
        a.text.length + " characters, " + (a.thinking != null && a.n_thinking_tokens != null ? (a.n_tokens -
        a.n_thinking_tokens) + " answer tokens + " + a.n_thinking_tokens + " thinking" : a.n_tokens + " tokens") +
        ", finish: " + a.finish));
      if (a.thinking !== null && a.thinking !== undefined) {  // a reasoning policy's trace, folded away
        col.appendChild(el("details.thinking", [el("summary", "thinking (" + (a.n_thinking_tokens === null ?
          "tokens not counted" : a.n_thinking_tokens + " tokens") + ", not judged)"), el("pre.thinking", a.thinking)]));
      }
      col.appendChild(el("pre.answer", a.text));
    });
    if (!item.answers.length) col.appendChild(el("p.missing", "Answer not stored (failed generation or imported outputs)."));
    item.judgments.forEach((j) => {
      const parts = [el("span.badge." + j.status, j.status)];
      parts.push(" value " + (j.value === null ? "—" : fmt(j.value, 3)));
      if (j.label) parts.push(" label " + j.label);
      if (j.order) parts.push(" order " + j.order);
      if (j.game) parts.push(" game " + j.game);
      if (j.turn) parts.push(" turn " + j.turn);
      if (j.probs) parts.push(" p: " + Object.entries(j.probs).map(([k, p]) => k + "=" + fmt(p, 3)).join(", "));
      const box = el("div.judgment", [el("div.judgment-head", parts)]);
      if (j.error) box.appendChild(el("pre.judge-error", "error: " + j.error));
      box.appendChild(el("pre.judge-raw", j.raw === null ? "(no judge output)" : j.raw));
      col.appendChild(box);
    });
    return col;
  }

  function toggle(tr, r) {
    const open = tr.nextSibling;
    if (open && open.classList && open.classList.contains("detail-row")) { open.remove(); return; }
    const td = el("td");
    td.colSpan = 9;
    const detail = el("div.detail", [el("h3", "Item " + r.unit + (r.prompt.category ? " (" + r.prompt.category + ")" : ""))]);
    r.prompt.text.forEach((p, i) => detail.appendChild(el("pre.prompt-text", (r.prompt.text.length > 1 ? "Turn " + (i + 1) + ": " : "") + p)));
    if (!r.prompt.text.length) detail.appendChild(el("p.missing", "Prompt text not available (task data moved)."));
    if (r.prompt.baseline !== undefined) {
      detail.appendChild(el("details.baseline", [el("summary", "The baseline's answer (what the judge compared against)"),
        el("pre.answer", r.prompt.baseline)]));
    }
    detail.appendChild(el("p.diff", "score A " + fmt(r.a && r.a.score) + ", score B " + fmt(r.b && r.b.score) +
      ", Δ (B − A) " + (r.diff === null ? "—" : fmt(r.diff)) + (r.flipped ? " — flipped" : "")));
    detail.appendChild(el("div.sides", [side("A", DATA.models[Number(sel.a.value)], r.a),
      side("B", DATA.models[Number(sel.b.value)], r.b)]));
    td.appendChild(detail);
    const row = el("tr.detail-row", td);
    tr.parentNode.insertBefore(row, tr.nextSibling);
  }

  [sel.task, sel.a, sel.b, sel.sort, sel.category, sel.verdict].forEach((s) => s.addEventListener("change", compute));
  search.addEventListener("input", compute);
  prev.addEventListener("click", () => { if (page > 0) { page--; render(); } });
  next.addEventListener("click", () => { if ((page + 1) * PAGE < rows.length) { page++; render(); } });
  if (taskNames.length) compute();
  else vsec.appendChild(el("p.note", "No per-item records in these runs."));

  // ------------------------------------------------------------ provenance
  const psec = section("Provenance", "provenance");
  DATA.provenance.forEach((p) => {
    psec.appendChild(el("h3", "Run " + p.run));
    const kv = el("table.kv");
    const rowsKv = [["kind", p.kind], ["status", p.status], ["started", p.started_at], ["finished", p.finished_at],
      ["git", p.git], ["backend", p.backend], ["judge", p.judge], ["KL reference", p.reference],
      ["decoding", p.generation], ["tasks (module, version, decoding)", p.tasks], ["models (spec, revision)", p.models]];
    rowsKv.forEach(([k, v]) => kv.appendChild(el("tr", [el("th", k),
      el("td", typeof v === "object" && v !== null ? el("pre", JSON.stringify(v, null, 1)) : (v === null || v === undefined ? "—" : String(v)))])));
    psec.appendChild(kv);
  });
  // navigation start to first render, and the script's own parse and render times (benchmarks/perf/report_size.py)
  window.__reportReadyMs = performance.now();
  window.__reportTimings = {script_start_ms: started, parse_ms: parsed - started, render_ms: performance.now() - parsed};
  window.__reportReady = true;
})();
