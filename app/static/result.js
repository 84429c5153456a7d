// The result on show (a before/after comparison over the person photo, the mask as an overlay,
// seed, timings, download) and the earlier results of the session, kept as object URLs.

const $ = (id) => document.getElementById(id);
let current = null; // {imageUrl, personUrl, maskUrl, maskObjectUrl, seed, ...}
let resultCount = 0;


const EXTENSIONS = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

function fileName(result) {
  return `try-on-seed-${result.seed}.${EXTENSIONS[result.mimeType] || "png"}`;
}

// "total" first; the stages as the API names them, without the "pipeline_" prefix.
function timingsElement(timingsMs) {
  const fragment = document.createDocumentFragment();
  const { total, ...stages } = timingsMs || {};
  fragment.append(total === undefined ? "not reported" : `${formatMs(total)} in total`);
  const names = Object.keys(stages);
  if (!names.length) return fragment;
  const breakdown = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "By stage";
  const list = document.createElement("ul");
  for (const name of names) {
    const item = document.createElement("li");
    item.textContent = `${name.replace(/^pipeline_/, "").replaceAll("_", " ")}: ${formatMs(stages[name])}`;
    list.append(item);
  }
  breakdown.append(summary, list);
  fragment.append(breakdown);
  return fragment;
}

function showDetails(result) {
  const details = $("details");
  details.replaceChildren();
  const rows = [
    ["Seed", String(result.seed)],
    ["Size", `${result.width} × ${result.height}`],
    ["Time", timingsElement(result.timingsMs)],
    ["From cache", result.cached ? "yes (same photos, options and seed)" : "no"],
  ];
  for (const [term, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.append(value);
    details.append(dt, dd);
  }
}

function archive(result) {
  const words = `${result.summary}, seed ${result.seed}`;
  const image = document.createElement("img");
  image.src = result.imageUrl;
  image.alt = `Result ${result.number}: ${words}`;
  const caption = document.createElement("p");
  caption.textContent = `${words}, at ${result.finishedAt}`;
  const link = document.createElement("a");
  link.href = result.imageUrl;
  link.download = fileName(result);
  link.textContent = "Download";
  link.setAttribute("aria-label", `Download result ${result.number}`);
  const item = document.createElement("li");
  item.append(image, caption, link);
  $("history-list").prepend(item);
  $("history").hidden = false;
  URL.revokeObjectURL(result.personUrl);
  if (result.maskObjectUrl) URL.revokeObjectURL(result.maskObjectUrl);
}

export function showResult(result) {
  if (current) archive(current);
  resultCount += 1;
  current = { ...result, number: resultCount, finishedAt: new Date().toLocaleTimeString() };
  const compare = $("compare");
  compare.style.setProperty("--aspect", `${result.width} / ${result.height}`);
  compare.classList.remove("no-before");
  $("compare-field").hidden = false;
  $("before-image").src = result.personUrl;
  $("result-image").src = result.imageUrl;
  $("mask-image").hidden = true;
  $("mask-image").removeAttribute("src");
  $("show-mask").checked = false;
  const download = $("download");
  download.href = result.imageUrl;
  download.download = fileName(result);
  showDetails(current);
  $("result-empty").hidden = true;
  $("result-view").hidden = false;
  // Screen readers land on "Result"; on a phone the result is scrolled into view below the form.
  $("result").scrollIntoView({ block: "nearest" });
  $("result-heading").focus({ preventScroll: true });
}

// The mask is white where the model repainted: drawn as a translucent tint there, and clear
// elsewhere, so the photo under it stays visible.
const MASK_TINT = [236, 32, 138, 150]; // RGB and the alpha of a fully white mask pixel

async function tintedMask(maskUrl) {
  const image = new Image();
  image.src = maskUrl;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const [red, green, blue, alpha] = MASK_TINT;
  for (let i = 0; i < pixels.data.length; i += 4) {
    const white = pixels.data[i] / 255;
    pixels.data.set([red, green, blue, Math.round(alpha * white)], i);
  }
  context.putImageData(pixels, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  URL.revokeObjectURL(maskUrl);
  return URL.createObjectURL(blob);
}

/** Wires the comparison slider and the mask toggle: `loadMask(url)` resolves to an object URL,
 * `showError(text)` reports a mask that could not be loaded. */
export function setUpResults(loadMask, showError) {
  // Without a drawable "before" (HEIC outside Safari) the result is shown whole.
  $("before-image").addEventListener("error", () => {
    if (!$("before-image").getAttribute("src")) return;
    $("compare").classList.add("no-before");
    $("compare-field").hidden = true;
  });

  $("compare-slider").addEventListener("input", (event) => {
    const position = Number(event.target.value);
    $("compare").style.setProperty("--divider", `${position}%`);
    event.target.setAttribute("aria-valuetext", `${position}% before, ${100 - position}% result`);
  });

  $("show-mask").addEventListener("change", async (event) => {
    const mask = $("mask-image");
    if (!event.target.checked) {
      mask.hidden = true;
      return;
    }
    try {
      if (!current.maskObjectUrl) {
        current.maskObjectUrl = await tintedMask(await loadMask(current.maskUrl));
      }
      mask.src = current.maskObjectUrl;
      mask.hidden = !event.target.checked;
    } catch (error) {
      event.target.checked = false;
      showError(`The mask could not be loaded: ${error.message}`);
    }
  });
}
