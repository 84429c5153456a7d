// The try-on page: the UI around api.js (the client of the public API, which the page uses and
// nothing else). /health feeds the banner; the form becomes a job whose progress, result, mask
// and errors are shown in words.
import { ApiError, FINAL_STATES, TryOnClient } from "/static/api.js";
import { setUpResults, showResult } from "/static/result.js";

const KEY_STORAGE = "catvton.apiKey";
const HEALTH_INTERVAL_MS = { loading: 2000, steady: 15000, unreachable: 5000 };
const STAGE_WORDS = {
  queued: "Waiting in the queue",
  masking: "Finding the garment area",
  denoising: "Denoising",
  decoding: "Decoding the image",
  encoding: "Encoding the image",
};
// The API names a form field in its 413/415/422 messages; this maps the name to the control.
const FIELD_CONTROLS = {
  person_image: "person-photo",
  cloth_image: "garment-photo",
  cloth_type: "cloth-type",
  num_inference_steps: "steps",
  guidance_scale: "guidance",
  seed: "seed",
  output_format: "output-format",
};

const $ = (id) => document.getElementById(id);
const form = $("try-on-form");
const submitButton = $("submit");
const cancelButton = $("cancel");
const progressArea = $("progress-area");
const progressBar = $("progress");
const stageLine = $("stage");
const message = $("message");
const banner = $("banner");
const keyForm = $("key-form");
const keyInput = $("api-key");

const run = {
  active: false,
  controller: null, // aborts the upload, a retry wait, the stream and the polling
  jobId: null,
  waitingForKey: false, // the last attempt got 401: a saved key resubmits
  preview: null, // {step, etag, objectUrl} on show, wanted (a newer step), loading
};

// ---- the API key (kept in this browser, sent as Authorization: Bearer) -------------------

// The person photo, stored once (POST /api/try-on/images): later try-ons of the same photo send
// its id, so changing only the garment uploads only the garment and the server reuses its mask.
const storedPerson = { file: null, imageId: null };
const FORGOTTEN_IMAGE = new Set(["image_not_found", "image_expired"]);

let unstoredKey = ""; // where storage is disabled, the key lives as long as the page

function storedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || unstoredKey;
  } catch {
    return unstoredKey;
  }
}

function storeKey(key) {
  unstoredKey = key;
  $("forget-key").hidden = !key;
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    /* storage disabled: unstoredKey serves this page */
  }
}

const client = new TryOnClient(storedKey);

function askForKey(text) {
  keyForm.hidden = false;
  run.waitingForKey = true;
  showMessage(text, "error");
  keyInput.focus();
}

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) {
    keyInput.focus();
    return;
  }
  storeKey(key);
  keyInput.value = "";
  keyInput.placeholder = "saved in this browser";
  showMessage("Key saved in this browser.", "info");
  if (run.waitingForKey && !run.active) {
    run.waitingForKey = false;
    form.requestSubmit();
  }
});

$("forget-key").addEventListener("click", () => {
  storeKey("");
  keyInput.value = "";
  keyInput.placeholder = "";
  showMessage("Key removed from this browser.", "info");
  keyInput.focus(); // the button just pressed is gone
});

// ---- messages and the health banner ----------------------------------------------------------

function showMessage(text, kind = "error") {
  // Rewriting an alert region re-announces it: only write what changed.
  if (message.textContent !== text) message.textContent = text;
  message.dataset.kind = text ? kind : "";
  if (text) message.scrollIntoView({ block: "nearest" });
}

function setBanner(text, kind) {
  banner.hidden = !text;
  banner.dataset.kind = kind || "";
  if (banner.textContent !== text) banner.textContent = text;
}

async function refreshHealth() {
  let delay = HEALTH_INTERVAL_MS.steady;
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const health = await response.json();
    if (health.status === "loading") {
      setBanner(health.message, "loading");
      delay = HEALTH_INTERVAL_MS.loading;
    } else if (health.status === "error") {
      setBanner(`The models failed to load: ${health.error || health.message}`, "error");
    } else if (health.status !== "ok") {
      setBanner(health.message, "error"); // e.g. draining before a restart
      delay = HEALTH_INTERVAL_MS.loading;
    } else if (health.demo) {
      setBanner(health.message, "demo");
    } else {
      setBanner("", "");
    }
  } catch {
    setBanner("The server cannot be reached; trying again.", "error");
    delay = HEALTH_INTERVAL_MS.unreachable;
  }
  setTimeout(refreshHealth, delay);
}

// ---- photos: pickers, drag and drop, previews --------------------------------------------------

function setUpPhoto(inputId, previewId, hintId) {
  const input = $(inputId);
  const preview = $(previewId);
  const hint = $(hintId);
  const zone = input.closest(".drop-zone");
  const defaultHint = hint.textContent;

  input.addEventListener("change", () => {
    clearInvalid([input]);
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.removeAttribute("src");
    preview.hidden = true;
    const file = input.files[0];
    hint.textContent = file ? file.name : defaultHint;
    if (!file) return;
    preview.src = URL.createObjectURL(file);
    preview.alt = `Preview of ${file.name}`;
    preview.hidden = false;
  });
  // Most browsers but Safari cannot draw HEIC; the server decodes it all the same.
  preview.addEventListener("error", () => {
    const file = input.files[0];
    if (!preview.getAttribute("src") || !file) return;
    preview.hidden = true;
    const heic = /hei[cf]/i.test(file.type) || /\.hei[cf]$/i.test(file.name);
    hint.textContent = heic
      ? `${file.name}: no preview in this browser; the server reads HEIC.`
      : `${file.name}: this browser cannot show it as an image.`;
  });

  // The picture area opens the picker on a click too (the keyboard has the input itself).
  zone.querySelector(".picture").addEventListener("click", () => input.click());
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (!file) return;
    const transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  });
}

// A photo dropped beside a zone must not replace the page with the image.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

$("random-seed").addEventListener("change", (event) => {
  $("seed").disabled = event.target.checked;
});

// ---- the form -> multipart fields of POST /api/try-on/jobs ---------------------------------

function clearInvalid(controls = form.querySelectorAll("[aria-invalid]")) {
  for (const control of controls) {
    if (!control.hasAttribute("aria-invalid")) continue;
    control.removeAttribute("aria-invalid");
    control.removeAttribute("aria-errormessage");
    const hint = control.dataset.hint;
    if (hint) control.setAttribute("aria-describedby", hint);
    else control.removeAttribute("aria-describedby");
    $(`${control.id}-error`)?.remove();
  }
}

// Each control the message names gets the words about it beside it (a 422 may name several,
// "field: problem; field: problem"), is marked invalid, and the first one takes the focus.
function markInvalid(text) {
  const names = (field) => new RegExp(`\\b${field}\\b`).test(text);
  const named = Object.entries(FIELD_CONTROLS).filter(([field]) => names(field));
  for (const [field, id] of named) {
    const control = $(id);
    const own = text.split("; ").filter((part) => part.includes(field));
    const error = document.createElement("p");
    error.className = "field-error";
    error.id = `${id}-error`;
    error.textContent = named.length > 1 && own.length ? own.join("; ") : text;
    control.closest(".drop-zone, .field").append(error);
    control.dataset.hint = control.getAttribute("aria-describedby") || "";
    control.setAttribute("aria-describedby", `${control.dataset.hint} ${error.id}`.trim());
    control.setAttribute("aria-errormessage", error.id);
    control.setAttribute("aria-invalid", "true");
  }
  if (!named.length) return;
  const first = $(named[0][1]);
  const options = first.closest("details");
  if (options) options.open = true;
  first.focus();
}

function formFields() {
  const person = $("person-photo").files[0];
  const garment = $("garment-photo").files[0];
  if (!person || !garment) {
    const missing = !person ? "person_image" : "cloth_image";
    const text = !person ? "Choose a person photo first." : "Choose a garment photo first.";
    showMessage(`${text} (${missing})`, "error");
    markInvalid(`${text} (${missing})`);
    return null;
  }
  const fields = new FormData();
  fields.append("person_image", person);
  fields.append("cloth_image", garment);
  fields.append("cloth_type", $("cloth-type").value);
  fields.append("num_inference_steps", $("steps").value);
  fields.append("guidance_scale", $("guidance").value);
  fields.append("seed", $("random-seed").checked ? "-1" : $("seed").value);
  fields.append("output_format", $("output-format").value);
  fields.append("repaint", $("repaint").checked ? "true" : "false");
  return fields;
}

// ---- a run: submit (retrying while busy) -> follow -> show ----------------------------------

function setRunning(active) {
  run.active = active;
  submitButton.disabled = active;
  cancelButton.hidden = !active;
  cancelButton.disabled = false;
  if (active) {
    progressArea.hidden = false;
    setProgress(0, "Uploading the photos");
    $("result").scrollIntoView({ block: "nearest" }); // on a phone it is below the form
  } else {
    progressArea.hidden = true; // the result, or the message, says how it ended
    run.controller = null;
    run.jobId = null;
  }
}

function setProgress(fraction, stageText, detail = "") {
  const percent = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  progressBar.setAttribute("aria-valuenow", String(percent));
  progressBar.setAttribute("aria-valuetext", detail ? `${percent}%, ${detail}` : `${percent}%`);
  progressBar.style.setProperty("--fraction", String(percent / 100));
  const text = detail ? `${stageText}: ${detail}` : stageText;
  if (stageLine.textContent !== text) stageLine.textContent = text;
}

function shownFraction() {
  return Number(progressBar.getAttribute("aria-valuenow")) / 100;
}

function describeJob(job) {
  if (job.cancelRequested && !FINAL_STATES.has(job.status)) return ["Canceling", ""];
  const parts = [];
  if (job.status === "queued" && typeof job.queuePosition === "number") {
    parts.push(job.queuePosition === 0 ? "next in line" : `${job.queuePosition} ahead`);
  }
  if (job.stage === "denoising" && job.progress) {
    parts.push(`step ${job.progress.step} of ${job.progress.totalSteps}`);
  }
  if (typeof job.etaSeconds === "number") parts.push(`about ${Math.ceil(job.etaSeconds)} s left`);
  const words = job.status === "queued" ? STAGE_WORDS.queued : STAGE_WORDS[job.stage];
  return [words || "Working", parts.join(", ")];
}

function showRetry(error, seconds) {
  showMessage(`${error.message} Trying again in ${seconds} s (Cancel stops it).`, "info");
  setProgress(0, "Waiting to try again");
}

function showJob(job) {
  run.jobId = job.jobId;
  const [words, detail] = describeJob(job);
  setProgress(job.progress ? job.progress.fraction : 0, words, detail);
  if (job.preview && !FINAL_STATES.has(job.status)) wantPreview(job.preview, run.controller.signal);
}

// ---- the preview: fills the result area while the job denoises -----------------------------

/** The document names a preview: fetch it (If-None-Match) when its step grew, one at a time. */
function wantPreview({ url, step }, signal) {
  const preview = (run.preview ||= { step: 0, etag: null, objectUrl: null, wanted: 0 });
  if (step <= Math.max(preview.step, preview.wanted)) return;
  preview.wanted = step;
  if (!preview.loading) loadPreview(url, preview, signal);
}

async function loadPreview(url, preview, signal) {
  preview.loading = true;
  try {
    while (preview.wanted > preview.step && run.preview === preview) {
      const wanted = preview.wanted;
      const fetched = await client.preview(url, preview.etag, signal);
      if (run.preview !== preview) {
        if (fetched) URL.revokeObjectURL(fetched.objectUrl);
        return; // the job ended meanwhile: the result (or a message) replaced the preview
      }
      if (!fetched) {
        preview.step = Math.max(preview.step, wanted);
        continue;
      }
      if (preview.objectUrl) URL.revokeObjectURL(preview.objectUrl);
      Object.assign(preview, { objectUrl: fetched.objectUrl, etag: fetched.etag });
      preview.step = Math.max(fetched.step, wanted);
      showPreview(fetched);
    }
  } catch {
    // A preview is a nicety: a failed fetch leaves the bar, and the next step asks again.
    if (run.preview === preview) preview.wanted = preview.step;
  } finally {
    preview.loading = false;
  }
}

function showPreview({ objectUrl, step }) {
  $("preview-image").src = objectUrl;
  $("preview-caption").textContent = `A rough preview at step ${step}; the result replaces it`;
  $("result-empty").hidden = true;
  $("result-view").hidden = true; // an earlier result comes back with the new one
  $("preview-area").hidden = false;
}

function hidePreview() {
  const preview = run.preview;
  run.preview = null;
  if (!preview) return;
  $("preview-area").hidden = true;
  $("preview-image").removeAttribute("src");
  if (preview.objectUrl) URL.revokeObjectURL(preview.objectUrl);
  // No new result (failed, canceled): what was on show before comes back.
  const shown = Boolean($("result-image").getAttribute("src"));
  $("result-view").hidden = !shown;
  $("result-empty").hidden = shown;
}

async function startTryOn(event) {
  event.preventDefault();
  if (run.active) return;
  clearInvalid();
  showMessage("", "");
  const fields = formFields();
  if (!fields) return;
  run.waitingForKey = false;
  run.controller = new AbortController();
  const { signal } = run.controller;
  const person = fields.get("person_image");
  const personUrl = URL.createObjectURL(person);
  const clothType = $("cloth-type").selectedOptions[0].textContent;
  const summary = `${clothType}, ${fields.get("num_inference_steps")} steps`;
  setRunning(true);
  try {
    const job = await submitWithStoredPerson(fields, person, signal);
    showMessage("", "");
    const final = await client.follow(job, {
      signal,
      onUpdate: showJob,
      onConnectionLost: () => setProgress(shownFraction(), "Connection lost", "trying again"),
    });
    if (final.status === "succeeded") {
      const imageUrl = await client.blobUrl(final.result.imageUrl, signal);
      hidePreview();
      showResult({ ...final.result, imageUrl, cached: final.cached, personUrl, summary });
    } else {
      URL.revokeObjectURL(personUrl);
      const words = final.error ? final.error.message : `The try-on ${final.status}.`;
      showMessage(words, final.status === "canceled" ? "info" : "error");
    }
  } catch (error) {
    URL.revokeObjectURL(personUrl);
    showFailure(error, signal);
  } finally {
    hidePreview();
    setRunning(false);
  }
}

/** The store's errors name its one part, `image`: here it is the person photo. */
async function storePerson(person, signal) {
  try {
    return await client.storeImage(person, { signal, onRetry: showRetry });
  } catch (error) {
    if (error instanceof ApiError) {
      error.message = error.message.replace(/^image\b/, "person_image");
    }
    throw error;
  }
}

/** Submit with the person as person_image_id: stored first unless this very file already is;
 * stored again once if the server forgot it (expired or evicted). */
async function submitWithStoredPerson(fields, person, signal) {
  fields.delete("person_image");
  for (let attempt = 0; ; attempt += 1) {
    if (storedPerson.file !== person || !storedPerson.imageId) {
      const image = await storePerson(person, signal);
      Object.assign(storedPerson, { file: person, imageId: image.imageId });
    }
    fields.set("person_image_id", storedPerson.imageId);
    try {
      return await client.submit(fields, { signal, onRetry: showRetry });
    } catch (error) {
      if (attempt > 0 || !(error instanceof ApiError) || !FORGOTTEN_IMAGE.has(error.code)) {
        throw error;
      }
      storedPerson.imageId = null;
    }
  }
}

function showFailure(error, signal) {
  if (signal.aborted) {
    showMessage("Canceled before the job was queued.", "info");
    return;
  }
  if (!(error instanceof ApiError)) {
    showMessage("Could not reach the server: check the connection and try again.", "error");
    return;
  }
  if (error.status === 401) {
    askForKey(`${error.message} Enter it in the API key field; it is kept in this browser.`);
    return;
  }
  showMessage(error.message, "error");
  if ([413, 415, 422].includes(error.status)) markInvalid(error.message);
}

async function cancelTryOn() {
  if (!run.active) return;
  if (!run.jobId) {
    run.controller.abort(); // still uploading or waiting to retry: no job to cancel yet
    return;
  }
  cancelButton.disabled = true;
  setProgress(shownFraction(), "Canceling");
  try {
    // The stream (or polling) then delivers the final "canceled" document.
    await client.cancel(run.jobId);
  } catch (error) {
    cancelButton.disabled = false;
    showMessage(error.message, "error");
  }
}

// ---- start ---------------------------------------------------------------------------------

setUpPhoto("person-photo", "person-preview", "person-hint");
setUpPhoto("garment-photo", "garment-preview", "garment-hint");
setUpResults(
  (url) => client.blobUrl(url),
  (text) => showMessage(text, "error"),
);
form.addEventListener("submit", startTryOn);
cancelButton.addEventListener("click", cancelTryOn);
$("forget-key").hidden = !storedKey();
if (storedKey()) {
  keyForm.hidden = false;
  keyInput.placeholder = "saved in this browser";
}
refreshHealth();
