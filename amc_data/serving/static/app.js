// The search page: reads ?q= and ?page=, asks /api/search for each run, and draws each result
// with what the model attended to (a heat map over the picture's cropped square, or a strip of
// cells, the keywords highlighted by weight, the two modality weights as a bar).
"use strict";

const state = { info: null, query: "", page: 1, last: [] };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function heatColour(weight, strongest) {
  const alpha = strongest > 0 ? (0.8 * weight) / strongest : 0;
  return `rgba(255, 64, 0, ${alpha.toFixed(4)})`;
}

// Region weights drawn as cells: a grid (row-major) or one row (a strip).
function cells(weights, columns, cellPixels, className) {
  const rows = Math.ceil(weights.length / columns);
  const canvas = el("canvas", { class: className, "data-weights": JSON.stringify(weights) });
  canvas.width = columns * cellPixels;
  canvas.height = rows * cellPixels;
  const context = canvas.getContext("2d");
  const strongest = Math.max(...weights);
  weights.forEach((weight, r) => {
    context.fillStyle = heatColour(weight, strongest);
    context.fillRect((r % columns) * cellPixels, Math.floor(r / columns) * cellPixels, cellPixels,
      cellPixels);
  });
  return canvas;
}

function pictureView(hit, large) {
  const info = state.info;
  const weights = hit.region_weights;
  const grid = info.grid;
  const picture = hit.picture;
  const view = el("div", { class: picture ? "view" : "view no-picture" });
  if (picture) {
    const img = el("img", { src: large ? picture.large : picture.thumb, alt: `image ${hit.img_id}` });
    img.width = picture.width;
    img.height = picture.height;
    view.append(img);
  }
  if (weights && grid) {
    const heat = cells(weights, grid, 16, "heat");
    const crop = picture && picture.crop ? picture.crop : { x: 0, y: 0, w: 1, h: 1 };
    if (picture) {
      Object.assign(heat.style, {
        left: `${100 * crop.x}%`, top: `${100 * crop.y}%`,
        width: `${100 * crop.w}%`, height: `${100 * crop.h}%`,
      });
    }
    view.append(heat);
  } else if (weights) {
    view.append(cells(weights, weights.length, 16, "strip"));
  } else {
    view.append(el("div", { class: "legend", text: "no region attention (this model pools with fixed weights)" }));
  }
  return view;
}

function modalityBar(hit) {
  const m = hit.modality_weights;
  if (!m) return null;
  const bar = el("div", { class: "modality", title: "visual | keyword weight" },
    el("div", { class: "visual" }), el("div", { class: "keyword" }));
  bar.children[0].style.width = `${100 * m.visual}%`;
  bar.children[1].style.width = `${100 * m.keyword}%`;
  const legend = el("div", {
    class: "legend", text: `visual ${m.visual.toFixed(2)} · keywords ${m.keyword.toFixed(2)}`,
  });
  return el("div", {}, bar, legend);
}

function keywordList(hit) {
  const weights = hit.keyword_weights;
  if (!weights || !weights.length) return null;
  const strongest = Math.max(...weights.map((k) => k.weight));
  const list = el("div", { class: "keywords" });
  for (const k of weights) {
    const span = el("span", {
      text: k.word, title: k.weight.toFixed(3), "data-word": k.word, "data-weight": String(k.weight),
    });
    const alpha = strongest > 0 ? (0.85 * k.weight) / strongest : 0;
    span.style.background = `rgba(59, 111, 216, ${alpha.toFixed(4)})`;
    if (alpha > 0.5) span.style.color = "#fff";
    list.append(span, " ");
  }
  return list;
}

function hitCard(hit, run, large) {
  const card = el("div", {
    class: "hit", "data-run": String(run), "data-img-id": String(hit.img_id),
    "data-rank": String(hit.rank), "data-score": String(hit.score),
  },
  el("div", { class: "head" },
    el("strong", { text: `#${hit.rank}` }),
    el("span", { text: `score ${hit.score.toFixed(4)}` }),
    el("span", { class: "muted", text: `img ${hit.img_id}` })),
  hit.file_name ? el("div", { class: "name", text: hit.file_name, title: hit.file_name }) : null,
  pictureView(hit, large), modalityBar(hit), keywordList(hit));
  if (!large) card.addEventListener("click", () => showLarge(hit, run));
  return card;
}

function showLarge(hit, run) {
  const body = $("large-body");
  body.replaceChildren(hitCard(hit, run, true));
  $("large").hidden = false;
}

function hideLarge() { $("large").hidden = true; }

function wordChips(body) {
  const chips = el("div", { class: "words" });
  for (const w of body.words || []) chips.append(el("span", { class: "word-known", text: w }));
  for (const w of body.unknown || []) {
    chips.append(el("span", { class: "word-unknown", text: w, title: "not a word the run knows" }));
  }
  for (const w of body.ignored || []) {
    chips.append(el("span", { class: "word-ignored", text: w, title: "ignored" }));
  }
  return chips;
}

function runColumn(name, index, body, ok) {
  const column = el("section", { class: "run", "data-run": String(index) });
  column.append(el("h2", { text: name }));
  if (!ok) {
    column.append(el("p", { class: "status error", text: body.error || "The search failed." }));
    column.append(wordChips(body));
    return column;
  }
  const last = body.results.length ? body.results[body.results.length - 1].rank : 0;
  const first = body.results.length ? body.results[0].rank : 0;
  column.append(el("p", {
    class: "status",
    text: `${first}–${last} of ${body.images} ${body.split} images, best first`,
  }));
  column.append(wordChips(body));
  const results = el("div", { class: "results" });
  for (const hit of body.results) results.append(hitCard(hit, index, false));
  column.append(results);
  return column;
}

async function ask(run) {
  const params = new URLSearchParams({ q: state.query, page: String(state.page), run: String(run) });
  const response = await fetch(`/api/search?${params}`);
  let body;
  try { body = await response.json(); } catch (e) { body = { error: `HTTP ${response.status}` }; }
  return { ok: response.ok, body };
}

async function search() {
  const info = state.info;
  document.body.dataset.state = "searching";
  $("q").value = state.query;
  document.title = state.query ? `${state.query} · amc-data search` : "amc-data search";
  if (!state.query.trim()) {
    $("runs").replaceChildren();
    $("pager").hidden = true;
    document.body.dataset.state = "ready";
    return;
  }
  const answers = await Promise.all(info.runs.map((_, run) => ask(run)));
  state.last = answers;
  $("runs").replaceChildren(...answers.map((a, run) => runColumn(info.runs[run], run, a.body, a.ok)));
  const full = answers.some((a) => a.ok && a.body.results.length === a.body.top);
  $("pager").hidden = !answers.some((a) => a.ok);
  $("prev").disabled = state.page <= 1;
  $("next").disabled = !full || state.info.top * (state.page + 1) > state.info.max_top;
  $("page-label").textContent = `page ${state.page}`;
  document.body.dataset.state = "ready";
}

function readLocation() {
  const params = new URLSearchParams(window.location.search);
  state.query = params.get("q") || "";
  state.page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
}

function go(query, page) {
  state.query = query;
  state.page = page;
  const params = new URLSearchParams({ q: query });
  if (page > 1) params.set("page", String(page));
  history.pushState(null, "", `?${params}`);
  search();
}

async function start() {
  state.info = await (await fetch("/api/info")).json();
  const info = state.info;
  document.documentElement.style.setProperty("--runs", String(info.runs.length));
  const layout = info.grid ? `${info.grid}×${info.grid} grid` : `${info.regions} regions`;
  $("about").textContent = `${info.runs.join(" vs ")} · ${info.images} ${info.split} images · ` +
    `${layout}${info.pictures ? "" : " · no pictures (serve --images DIR shows them)"}`;
  $("q").maxLength = info.max_query_chars;
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    go($("q").value, 1);
  });
  $("prev").addEventListener("click", () => go(state.query, state.page - 1));
  $("next").addEventListener("click", () => go(state.query, state.page + 1));
  $("close").addEventListener("click", hideLarge);
  $("large").addEventListener("click", (event) => { if (event.target === $("large")) hideLarge(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") hideLarge(); });
  window.addEventListener("popstate", () => { readLocation(); search(); });
  readLocation();
  search();
}

start();
