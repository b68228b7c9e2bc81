// The page of anogan-serve: each image is posted alone to /predict (multipart, field "file", maps=png),
// so a bad file gets its own one-line reason while the others are scored. Nothing is fetched from
// outside this server. User data (file names, reasons) is only ever set as text, never as HTML.
"use strict";

const fmt = (v, digits = 4) => (v === null || v === undefined ? "n/a" : Number(v).toFixed(digits));

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fact(list, name, value, warn = false) {
  list.append(el("dt", {}, name));
  list.append(el("dd", warn ? { class: "warn" } : {}, value === null || value === undefined ? "n/a" : String(value)));
}

async function showFacts() {
  const list = document.getElementById("facts-list");
  try {
    const info = (await (await fetch("/info")).json()).model;
    const run = info.run || {};
    list.replaceChildren();
    fact(list, "normal data", run.normal_data ?? "not known (scorer.pt without its run folder)");
    fact(list, "scorer", info.scorer);
    fact(list, "image size", `${info.channels} × ${info.image_size} × ${info.image_size} (resize: ${info.resize})`);
    const threshold = info.thresholds[info.rule] ?? (typeof info.rule === "number" ? info.rule : null);
    fact(list, "threshold rule", `${info.rule}: ${threshold === null ? "infinite (flags nothing)" : fmt(threshold)}`);
    if (run.threshold_note) fact(list, "threshold note", run.threshold_note, true);
    const ci = run.val_auroc_ci ? ` [${fmt(run.val_auroc_ci[0], 2)}, ${fmt(run.val_auroc_ci[1], 2)}]` : "";
    fact(list, "validation AUROC", run.val_auroc === null || run.val_auroc === undefined ? null : fmt(run.val_auroc) + ci);
    fact(list, "GAN health", run.gan_health, run.gan_health !== null && run.gan_health !== "ok");
    fact(list, "GAN", run.gan_source);
    fact(list, "run folder", run.run_folder ?? info.provenance.run_dir);
    fact(list, "scorer file", info.scorer_file);
  } catch (err) {
    list.replaceChildren(el("dt", {}, "error"), el("dd", { class: "warn" }, `/info: ${err}`));
  }
}

function picture(kind, title, b64, missing) {
  const figure = el("figure");
  if (b64) {
    figure.append(el("img", { src: `data:image/png;base64,${b64}`, alt: title, class: kind }));
  } else {
    figure.append(el("div", { class: "none" }, missing));
  }
  figure.append(el("figcaption", {}, title));
  return figure;
}

async function score(file, card) {
  const body = new FormData();
  body.append("file", file, file.name);
  body.append("maps", "png");
  let answer;
  let response;
  try {
    response = await fetch("/predict", { method: "POST", body });
    answer = await response.json();
  } catch (err) {
    answer = { detail: `no answer from the server (${err})` };
  }
  if (!response || !response.ok) {
    card.classList.add("failed");
    card.append(el("p", { class: "error" }, answer.detail ?? `HTTP ${response.status}`));
    return false;
  }
  const p = answer.predictions[0];
  const label = p.label === 1 ? "anomalous" : "normal";
  card.classList.add(label);
  card.dataset.score = String(p.score);
  const numbers = el("div", { class: "numbers" });
  const scoreLine = el("span", {}, "score ");
  scoreLine.append(el("b", { class: "score" }, fmt(p.score)));
  const pLine = el("span", {}, "p-value ");
  pLine.append(el("b", { class: "p-value" }, fmt(p.p_value)));
  const labelLine = el("span", {}, "label ");
  labelLine.append(el("span", { class: `label label-${label}` }, label));
  const thresholdText = answer.threshold === null ? "∞" : fmt(answer.threshold);
  numbers.append(scoreLine, pLine, labelLine, el("span", {}, `threshold (${answer.rule}) ${thresholdText}`));
  card.append(numbers);
  const pictures = el("div", { class: "pictures" });
  const range = p.map_range ? ` (${fmt(p.map_range[0], 3)} to ${fmt(p.map_range[1], 3)})` : "";
  pictures.append(
    picture("input", "Input the model saw", p.input, "no input"),
    picture("map", `Map over the input${range}`, p.map_png, "this scorer makes no map"),
    picture("generated", "G(z)", p.generated, "this scorer has no G(z)"),
  );
  card.append(pictures);
  if (answer.warnings.length) {
    const list = el("ul", { class: "warnings" });
    for (const w of answer.warnings) list.append(el("li", {}, w));
    card.append(list);
  }
  return true;
}

async function scoreAll(files) {
  const results = document.getElementById("results");
  const status = document.getElementById("status");
  const batch = document.createDocumentFragment(); // the newest images on top, in the order picked
  const cards = [...files].map((file) => {
    const card = el("div", { class: "card" });
    card.append(el("h3", {}, file.name));
    batch.append(card);
    return [file, card];
  });
  results.prepend(batch);
  status.textContent = `scoring ${cards.length} image(s) ...`;
  const done = await Promise.all(cards.map(([file, card]) => score(file, card)));
  const failed = done.filter((ok) => !ok).length;
  status.textContent = `${done.length - failed} scored` + (failed ? `, ${failed} refused (reason in red)` : "");
  status.dataset.done = String(Number(status.dataset.done || 0) + done.length);
}

const input = document.getElementById("files");
const drop = document.getElementById("drop");
input.addEventListener("change", () => {
  if (input.files.length) scoreAll(input.files).finally(() => (input.value = ""));
});
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) scoreAll(e.dataTransfer.files);
});
showFacts();
