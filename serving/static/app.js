// The page at /ui: draw or drop an image, send it to /predict_image, show what the model saw and
// what it answered. Plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const pad = document.getElementById("pad");
const context = pad.getContext("2d");
const seen = document.getElementById("seen");
const bars = document.getElementById("bars");
const errorBox = document.getElementById("error");
const hint = document.getElementById("hint");
const answerBox = document.getElementById("answer");
const drop = document.getElementById("drop");
const fileInput = document.getElementById("file");
const status = document.getElementById("status");
const tokenForm = document.getElementById("token-form");

// A service started with tokens (SERVICE_TOKENS_FILE) answers 401 without one: the page asks
// once and keeps the token in this tab (sessionStorage), so reloads do not ask again.
const TOKEN_KEY = "classifier-token";

// Strokes about as thick, relative to the pad, as the datasets' pen strokes are in 28x28.
const STROKE = pad.width / 14;
let inkColour = "white";
let drawing = false;

function paperColour() {
  return inkColour === "white" ? "black" : "white";
}

function clearPad() {
  context.fillStyle = paperColour();
  context.fillRect(0, 0, pad.width, pad.height);
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) * pad.width) / box.width,
    y: ((event.clientY - box.top) * pad.height) / box.height,
  };
}

function startStroke(event) {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = true;
  const point = padPoint(event);
  context.strokeStyle = inkColour;
  context.fillStyle = inkColour;
  context.lineWidth = STROKE;
  context.lineCap = "round";
  context.lineJoin = "round";
  context.beginPath();
  context.arc(point.x, point.y, STROKE / 2, 0, 2 * Math.PI);
  context.fill();
  context.beginPath();
  context.moveTo(point.x, point.y);
}

function continueStroke(event) {
  if (!drawing) return;
  event.preventDefault();
  const point = padPoint(event);
  context.lineTo(point.x, point.y);
  context.stroke();
}

function endStroke(event) {
  if (!drawing) return;
  drawing = false;
  if (pad.hasPointerCapture(event.pointerId)) pad.releasePointerCapture(event.pointerId);
  classifyDrawing();
}

function classifyDrawing() {
  pad.toBlob((blob) => send(blob, "drawing.png"), "image/png");
}

function showError(message) {
  errorBox.textContent = message;
  status.textContent = message;
  status.className = "error";
  errorBox.hidden = false;
  answerBox.hidden = true;
  hint.hidden = true;
  document.body.dataset.state = "error";
}

async function send(blob, name) {
  const form = new FormData();
  form.append("image", blob, name);
  document.body.dataset.state = "busy";
  let response;
  try {
    response = await call("/predict_image?show_input=true", { method: "POST", body: form });
  } catch (error) {
    showError(`Could not reach the service (${error.message}). Is it running?`);
    return;
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    // Not JSON: a proxy's or a crashed server's page. Say what came back.
  }
  if (!response.ok) {
    const reason = answer && answer.error ? answer.error : response.statusText;
    showError(`The service refused this image (HTTP ${response.status}): ${reason}`);
    return;
  }
  if (!answer || !answer.probabilities) {
    showError(`The service answered something unexpected (HTTP ${response.status}).`);
    return;
  }
  showAnswer(answer);
}

function showAnswer(answer) {
  errorBox.hidden = true;
  hint.hidden = true;
  showInput(answer.input);
  bars.replaceChildren();
  for (const [name, probability] of Object.entries(answer.probabilities)) {
    bars.append(bar(name, probability, name === answer.class_name));
  }
  // The service follows the registry: a new version may have taken over since the page loaded.
  if (answer.model_version !== document.getElementById("model-version").textContent) showModel();
  document.getElementById("winner").textContent = answer.class_name;
  document.getElementById("winner-probability").textContent = percent(
    answer.probabilities[answer.class_name],
  );
  answerBox.hidden = false;
  answerBox.dataset.predicted = answer.class_name;
  status.textContent = `It is ${answer.class_name} (${percent(answer.probabilities[answer.class_name])})`;
  status.className = "";
  document.body.dataset.state = "done";
}

function bar(name, probability, winner) {
  const item = document.createElement("li");
  item.dataset.class = name;
  if (winner) item.className = "winner";
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = name;
  const track = document.createElement("span");
  track.className = "bar";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = `${(probability * 100).toFixed(1)}%`;
  track.append(fill);
  const value = document.createElement("span");
  value.className = "value";
  value.textContent = percent(probability);
  item.append(label, track, value);
  return item;
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)}%`;
}

function showInput(rows) {
  const pixels = seen.getContext("2d").createImageData(28, 28);
  rows.forEach((row, y) =>
    row.forEach((value, x) => {
      const offset = 4 * (28 * y + x);
      const grey = Math.round(value * 255);
      pixels.data.set([grey, grey, grey, 255], offset);
    }),
  );
  seen.getContext("2d").putImageData(pixels, 0, 0);
}

// fetch, with the token when there is one; on a 401 it asks for a token and tries again.
async function call(url, options) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = new Headers(options.headers || {});
    if (token) headers.set("authorization", `Bearer ${token}`);
    const response = await fetch(url, { ...options, headers });
    if (response.status !== 401) return response;
    if (token) sessionStorage.removeItem(TOKEN_KEY);
    const answer = await response.json().catch(() => ({}));
    sessionStorage.setItem(TOKEN_KEY, await askForToken(answer.error || "This service asks for a token."));
  }
}

// Shows the token form with `message` and resolves with what the user enters.
function askForToken(message) {
  document.getElementById("token-prompt").textContent = message;
  tokenForm.hidden = false;
  if (document.body.dataset.state !== "token") tokenForm.dataset.previous = document.body.dataset.state;
  document.body.dataset.state = "token";
  const field = document.getElementById("token");
  field.focus();
  return new Promise((resolve) => {
    tokenForm.addEventListener(
      "submit",
      (event) => {
        event.preventDefault();
        tokenForm.hidden = true;
        document.body.dataset.state = tokenForm.dataset.previous;
        resolve(field.value.trim());
        field.value = "";
      },
      { once: true },
    );
  });
}

async function showModel() {
  try {
    const response = await call("/metadata", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    const metadata = await response.json();
    if (!response.ok) throw new Error(`HTTP ${response.status}: ${metadata.error || response.statusText}`);
    const accuracy = metadata.metrics && metadata.metrics.test_accuracy;
    document.getElementById("model-name").textContent = metadata.registered_model;
    document.getElementById("model-version").textContent = metadata.version;
    document.getElementById("model-since").textContent = (metadata.served_since || "").replace(
      "T",
      " ",
    );
    document.getElementById("model-accuracy").textContent =
      typeof accuracy === "number" ? percent(accuracy) : "not recorded";
  } catch (error) {
    document.getElementById("model").textContent = `Could not read /metadata (${error.message}).`;
  }
}

pad.addEventListener("pointerdown", startStroke);
pad.addEventListener("pointermove", continueStroke);
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
document.getElementById("clear").addEventListener("click", clearPad);
document.getElementById("classify").addEventListener("click", classifyDrawing);
for (const choice of document.querySelectorAll("input[name=ink]")) {
  choice.addEventListener("change", () => {
    inkColour = choice.value;
    clearPad();
  });
}
fileInput.addEventListener("change", () => {
  if (fileInput.files.length) send(fileInput.files[0], fileInput.files[0].name);
  fileInput.value = "";
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) send(file, file.name);
});

clearPad();
showModel();
