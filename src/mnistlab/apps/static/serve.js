// mnistlab serve: draw on the canvas, post it as a PNG, show what the model read.
// No libraries and no network beyond this server.
"use strict";

const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const bars = document.getElementById("bars");
const digitEl = document.getElementById("digit");
const confEl = document.getElementById("confidence");
const messageEl = document.getElementById("message");
const predictionEl = document.getElementById("prediction");
const PEN = canvas.width / 12;   // about MNIST's stroke width once fitted into 20x20
const DEBOUNCE_MS = 120;

let classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
let version = 0;        // bumped on every change; a reply for an older version is dropped
let timer = null;
let drawing = false;
let inked = false;
let last = null;
window.mnistlab = { version: () => version };

function blank() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#000";
  ctx.fillStyle = "#000";
  ctx.lineWidth = PEN;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
}

function buildBars() {
  bars.innerHTML = "";
  classes.forEach((name, i) => {
    const li = document.createElement("li");
    li.dataset.index = i;
    li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct">0.0%</span>';
    li.querySelector(".name").textContent = name;
    li.dataset.p = "0";
    bars.appendChild(li);
  });
}

function showInfo(info) {
  if (info.class_names && info.class_names.length) classes = info.class_names;
  buildBars();
  const parts = [`${info.preset} (${info.model})`, `trained on ${info.dataset}`, `${info.steps} steps`];
  if (info.test_accuracy != null) parts.push(`test accuracy ${(100 * info.test_accuracy).toFixed(2)}%`);
  else if (info.validation_accuracy != null) parts.push(`validation accuracy ${(100 * info.validation_accuracy).toFixed(2)}%`);
  if (info.checkpoint) parts.push(info.checkpoint);
  document.getElementById("model-info").textContent = parts.join(" · ");
}

function showResult(result, forVersion) {
  messageEl.textContent = "";
  digitEl.textContent = result.class;
  confEl.textContent = `${(100 * result.probability).toFixed(1)}%`;
  result.probabilities.forEach((p, i) => {
    const li = bars.children[i];
    if (!li) return;
    li.dataset.p = String(p);
    li.classList.toggle("top", i === result.label);
    li.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    li.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
  });
  const img = seen.createImageData(28, 28);
  result.image.forEach((row, y) => row.forEach((v, x) => {
    const k = 4 * (28 * y + x), g = Math.round(255 * v);
    img.data[k] = img.data[k + 1] = img.data[k + 2] = g;
    img.data[k + 3] = 255;
  }));
  seen.putImageData(img, 0, 0);
  predictionEl.dataset.label = String(result.label);
  predictionEl.dataset.version = String(forVersion);
}

function reset(forVersion) {
  digitEl.textContent = "–";
  confEl.textContent = "";
  messageEl.textContent = "";
  for (const li of bars.children) {
    li.dataset.p = "0";
    li.classList.remove("top");
    li.querySelector(".fill").style.width = "0";
    li.querySelector(".pct").textContent = "0.0%";
  }
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 28, 28);
  delete predictionEl.dataset.label;
  predictionEl.dataset.version = String(forVersion);
}

async function send(body, type) {
  const forVersion = version;
  try {
    const reply = await fetch("/api/predict", { method: "POST", headers: { "Content-Type": type }, body });
    const data = await reply.json();
    if (forVersion !== version) return;   // the drawing changed meanwhile
    if (!reply.ok) {
      reset(forVersion);
      messageEl.textContent = data.error || `error ${reply.status}`;
      return;
    }
    showResult(data, forVersion);
  } catch (err) {
    if (forVersion === version) messageEl.textContent = `the server did not answer (${err.message})`;
  }
}

function predictCanvas() {
  clearTimeout(timer);
  timer = null;
  if (!inked) return;
  canvas.toBlob((blob) => send(blob, "image/png"), "image/png");
}

function changed(now) {
  version += 1;
  clearTimeout(timer);
  if (now) predictCanvas();
  else timer = setTimeout(predictCanvas, DEBOUNCE_MS);
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width,
          (event.clientY - box.top) * canvas.height / box.height];
}

canvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  drawing = true;
  inked = true;
  last = point(event);
  ctx.beginPath();
  ctx.arc(last[0], last[1], PEN / 2, 0, 2 * Math.PI);
  ctx.fill();
  changed(false);
});
canvas.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  event.preventDefault();
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  ctx.beginPath();
  ctx.moveTo(last[0], last[1]);
  for (const e of (events.length ? events : [event])) {
    last = point(e);
    ctx.lineTo(last[0], last[1]);
  }
  ctx.stroke();
  changed(false);
});
for (const type of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(type, () => {
    if (!drawing) return;
    drawing = false;
    changed(true);
  });
}

document.getElementById("clear").addEventListener("click", () => {
  blank();
  inked = false;
  version += 1;
  clearTimeout(timer);
  reset(version);
});

function upload(file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {  // show it on the canvas, as large as fits
    blank();
    const s = Math.min(canvas.width / img.width, canvas.height / img.height);
    const w = img.width * s, h = img.height * s;
    ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  img.onerror = () => URL.revokeObjectURL(url);
  img.src = url;
  inked = false;        // the file itself is read, not the canvas copy
  version += 1;
  clearTimeout(timer);
  send(file, file.type || "application/octet-stream");
}

document.getElementById("file").addEventListener("change", (event) => upload(event.target.files[0]));
canvas.addEventListener("dragover", (event) => { event.preventDefault(); canvas.classList.add("dragover"); });
canvas.addEventListener("dragleave", () => canvas.classList.remove("dragover"));
canvas.addEventListener("drop", (event) => {
  event.preventDefault();
  canvas.classList.remove("dragover");
  upload(event.dataTransfer.files[0]);
});

blank();
buildBars();
reset(0);
fetch("/api/info").then((r) => r.json()).then(showInfo).catch(() => {
  document.getElementById("model-info").textContent = "could not read the model's details";
});
