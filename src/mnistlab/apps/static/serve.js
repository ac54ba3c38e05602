// mnistlab serve: draw on the canvas; while you draw, the canvas is posted as a PNG and every
// model's reading (and why) is shown beside it. No libraries and no network beyond this server.
"use strict";

const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d", { willReadFrequently: true });
const seen = document.getElementById("seen").getContext("2d");
const readingsEl = document.getElementById("readings");
const messageEl = document.getElementById("message");
const hintEl = document.getElementById("empty-hint");
const undoButton = document.getElementById("undo");
const penButton = document.getElementById("pen");
const eraserButton = document.getElementById("eraser");
const sizeInput = document.getElementById("size");
const template = document.getElementById("reading-template");

const MIN_GAP_MS = 90;      // live reading: at most one request in flight, about 11 a second
const UNDO_DEPTH = 40;

let models = [];            // /api/info's "models": one card each
let cards = [];
let version = 0;            // bumped on every change of the drawing
let shown = 0;              // the version the cards show (a late reply for an older one is dropped)
let drawing = false, erasing = false, inked = false, last = null;
let inFlight = false, pending = false, lastSent = -Infinity, timer = null;
let readWhileDrawing = 0;   // readings shown with the pen still down (the tests read it)
const history = [];         // canvas snapshots before each change, for undo
window.mnistlab = { version: () => version, shown: () => shown, whileDrawing: () => readWhileDrawing };

// -- the cards -------------------------------------------------------------------------------------
function makeCard(info, index) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.dataset.model = String(index);
  card.querySelector(".name").textContent = models.length > 1 ? info.name : "The model reads";
  const about = [`${info.preset} (${info.model})`, `${info.steps} steps`];
  if (info.test_accuracy != null) about.push(`test ${(100 * info.test_accuracy).toFixed(2)}%`);
  else if (info.validation_accuracy != null) about.push(`validation ${(100 * info.validation_accuracy).toFixed(2)}%`);
  card.querySelector(".about").textContent = about.join(" · ");
  const bars = card.querySelector(".bars");
  (info.class_names || []).forEach((name, i) => {
    const li = document.createElement("li");
    li.dataset.index = i;
    li.dataset.p = "0";
    li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="pct">0.0%</span>';
    li.querySelector(".name").textContent = name;
    li.title = name;
    bars.appendChild(li);
  });
  readingsEl.appendChild(card);
  return card;
}

function showInfo(info) {
  models = info.models && info.models.length ? info.models : [info];
  cards = models.map(makeCard);
  const parts = models.length > 1
    ? [`${models.length} models side by side`, ...models.map((m) => m.name)]
    : [`${info.preset} (${info.model})`, `trained on ${info.dataset}`, `${info.steps} steps`,
       ...(info.test_accuracy != null ? [`test accuracy ${(100 * info.test_accuracy).toFixed(2)}%`]
         : info.validation_accuracy != null ? [`validation accuracy ${(100 * info.validation_accuracy).toFixed(2)}%`] : []),
       ...(info.checkpoint ? [info.checkpoint] : [])];
  document.getElementById("model-info").textContent = parts.join(" · ");
  reset(shown);
}

function paint(ctx2d, map, colour) {   // a 28x28 map onto a 28x28 canvas, colour(v) -> [r,g,b]
  const img = ctx2d.createImageData(28, 28);
  map.forEach((row, y) => row.forEach((v, x) => {
    const k = 4 * (28 * y + x), [r, g, b] = colour(v);
    img.data[k] = r; img.data[k + 1] = g; img.data[k + 2] = b; img.data[k + 3] = 255;
  }));
  ctx2d.putImageData(img, 0, 0);
}

const FOR = [214, 48, 39], AGAINST = [38, 92, 214];   // red: for the answer, blue: against

function showWhy(card, reading, image) {   // the digit dimmed, tinted by each pixel's evidence
  const why = card.querySelector(".why");
  const map = reading.why;
  const canvasWhy = card.querySelector(".why-map").getContext("2d");
  if (!map) { why.hidden = true; return; }
  why.hidden = false;
  const img = canvasWhy.createImageData(28, 28);
  for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) {
    const k = 4 * (28 * y + x), base = 90 * image[y][x], v = map[y][x] / 100;
    const tint = v >= 0 ? FOR : AGAINST, a = Math.min(1, Math.abs(v) * 1.6);
    for (let c = 0; c < 3; c++) img.data[k + c] = Math.round(base * (1 - a) + tint[c] * a);
    img.data[k + 3] = 255;
  }
  canvasWhy.putImageData(img, 0, 0);
  const units = card.querySelector(".units");
  units.innerHTML = "";
  if ((reading.units || []).length) {
    const title = document.createElement("p");
    title.className = "units-title";
    title.textContent = "Most active hidden units: the pattern each responds to, its activation";
    units.appendChild(title);
  }
  for (const unit of reading.units || []) {
    const fig = document.createElement("figure");
    const tile = document.createElement("canvas");
    tile.width = tile.height = 28;
    paint(tile.getContext("2d"), unit.weights, (w) => {
      const a = Math.min(1, Math.abs(w) / 100), tint = w >= 0 ? FOR : AGAINST;
      return tint.map((c) => Math.round(255 * (1 - a) + c * a));
    });
    tile.title = `hidden unit ${unit.unit}: activation ${unit.activation}, push toward the answer ${unit.push}`;
    const caption = document.createElement("figcaption");
    caption.textContent = `#${unit.unit} ${unit.activation.toFixed(1)}`;
    fig.append(tile, caption);
    units.appendChild(fig);
  }
}

function showReading(card, reading, image) {
  const digitEl = card.querySelector(".digit"), confEl = card.querySelector(".confidence");
  const note = card.querySelector(".note"), prediction = card.querySelector(".prediction");
  if (reading.error) {
    clearCard(card);
    note.textContent = reading.error;
    return;
  }
  note.textContent = "";
  digitEl.textContent = reading.class;
  confEl.textContent = `${(100 * reading.probability).toFixed(1)}%`;
  reading.probabilities.forEach((p, i) => {
    const li = card.querySelector(".bars").children[i];
    if (!li) return;
    li.dataset.p = String(p);
    li.style.setProperty("--p", String(p));
    li.classList.toggle("top", i === reading.label);
    li.querySelector(".pct").textContent = `${(100 * p).toFixed(1)}%`;
  });
  prediction.dataset.label = String(reading.label);
  showWhy(card, reading, image);
}

function clearCard(card) {
  card.querySelector(".digit").textContent = "–";
  card.querySelector(".confidence").textContent = "";
  card.querySelector(".note").textContent = "";
  for (const li of card.querySelector(".bars").children) {
    li.dataset.p = "0";
    li.style.setProperty("--p", "0");
    li.classList.remove("top");
    li.querySelector(".pct").textContent = "0.0%";
  }
  delete card.querySelector(".prediction").dataset.label;
  card.querySelector(".why").hidden = true;
}

function showSeen(image) {
  paint(seen, image, (v) => { const g = Math.round(255 * v); return [g, g, g]; });
}

function mark(forVersion) {
  shown = forVersion;
  readingsEl.dataset.version = String(forVersion);
}

function reset(forVersion) {
  messageEl.textContent = "";
  messageEl.className = "";
  cards.forEach(clearCard);
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 28, 28);
  mark(forVersion);
}

// -- asking the server -----------------------------------------------------------------------------
async function send(body, type, forVersion) {
  try {
    const reply = await fetch("/api/compare?explain=1", { method: "POST", headers: { "Content-Type": type }, body });
    const data = await reply.json();
    if (forVersion < shown) return;   // a newer drawing was already answered
    if (!reply.ok) {
      reset(forVersion);
      const noDigit = data.reason === "no-digit";
      messageEl.className = noDigit ? "no-digit" : "";
      messageEl.textContent = noDigit ? `Not a digit: ${data.error}` : (data.error || `error ${reply.status}`);
      return;
    }
    messageEl.textContent = "";
    messageEl.className = "";
    data.readings.forEach((reading, i) => cards[i] && showReading(cards[i], reading, data.image));
    showSeen(data.image);
    mark(forVersion);
    if (drawing) readWhileDrawing += 1;
  } catch (err) {
    if (forVersion >= shown) messageEl.textContent = `the server did not answer (${err.message})`;
  }
}

function pump() {             // send the latest drawing when nothing is in flight
  clearTimeout(timer);
  timer = null;
  if (!pending || inFlight) return;
  const wait = lastSent + MIN_GAP_MS - performance.now();
  if (wait > 0) { timer = setTimeout(pump, wait); return; }
  pending = false;
  if (!inked) { reset(version); return; }
  inFlight = true;
  lastSent = performance.now();
  const forVersion = version;
  canvas.toBlob(async (blob) => {
    await send(blob, "image/png", forVersion);
    inFlight = false;
    pump();
  }, "image/png");
}

function changed() {
  version += 1;
  hintEl.hidden = inked;
  pending = true;
  pump();
}

// -- drawing, undo, tools --------------------------------------------------------------------------
function blank() {
  ctx.globalCompositeOperation = "source-over";
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
}

function hasInk() {           // any dark pixel left (after the eraser, the canvas may be blank)
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  for (let i = 0; i < data.length; i += 4) if (data[i] < 200) return true;
  return false;
}

function remember() {
  history.push({ image: ctx.getImageData(0, 0, canvas.width, canvas.height), inked });
  if (history.length > UNDO_DEPTH) history.shift();
  undoButton.disabled = false;
}

function undo() {
  const state = history.pop();
  if (!state) return;
  ctx.putImageData(state.image, 0, 0);
  inked = state.inked;
  undoButton.disabled = history.length === 0;
  changed();
}

function brush() {
  const size = Number(sizeInput.value);
  ctx.lineWidth = erasing ? size * 1.5 : size;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = ctx.fillStyle = erasing ? "#fff" : "#000";
}

function setEraser(on) {
  erasing = on;
  penButton.setAttribute("aria-pressed", String(!on));
  eraserButton.setAttribute("aria-pressed", String(on));
  canvas.classList.toggle("erasing", on);
}

function point(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width,
          (event.clientY - box.top) * canvas.height / box.height];
}

canvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  remember();
  drawing = true;
  brush();
  last = point(event);
  ctx.beginPath();
  ctx.arc(last[0], last[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
  ctx.fill();
  if (!erasing) inked = true;
  changed();
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
  changed();
});
for (const type of ["pointerup", "pointercancel"]) {
  canvas.addEventListener(type, () => {
    if (!drawing) return;
    drawing = false;
    if (erasing) inked = hasInk();
    changed();
  });
}

undoButton.addEventListener("click", undo);
penButton.addEventListener("click", () => setEraser(false));
eraserButton.addEventListener("click", () => setEraser(true));
document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement && event.target.type !== "range") return;
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") { event.preventDefault(); undo(); }
  else if (event.key === "e" || event.key === "E") setEraser(true);
  else if (event.key === "p" || event.key === "P") setEraser(false);
});

document.getElementById("clear").addEventListener("click", () => {
  if (inked) remember();
  blank();
  inked = false;
  changed();
});

function upload(file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  const img = new Image();
  remember();
  img.onload = () => {  // show it on the canvas, as large as fits
    blank();
    const s = Math.min(canvas.width / img.width, canvas.height / img.height);
    const w = img.width * s, h = img.height * s;
    ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  img.onerror = () => URL.revokeObjectURL(url);
  img.src = url;
  inked = true;         // drawing on top of it sends the canvas; the file itself is read first
  hintEl.hidden = true;
  version += 1;
  pending = false;
  send(file, file.type || "application/octet-stream", version);
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
fetch("/api/info").then((r) => r.json()).then(showInfo).catch(() => {
  document.getElementById("model-info").textContent = "could not read the model's details";
});
