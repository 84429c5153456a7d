// A small browser client of the try-on jobs API (README, "Try-on jobs"), with no page code in it: the part of
// the page a client author can copy. Submit a job (retried after Retry-After while the GPU is busy
// or the models load), follow its events stream (read with fetch, because EventSource cannot
// send an Authorization header), poll the job every second when the stream fails, and fetch
// results as blobs (an <img src> cannot send the key either).

export const FINAL_STATES = new Set(["succeeded", "failed", "canceled"]);
const JOBS_PATH = "/api/try-on/jobs";
const IMAGES_PATH = "/api/try-on/images";
const POLL_INTERVAL_MS = 1000;
// Waiting for a busy GPU or loading models is automatic, but not forever on a forgotten tab.
const MAX_AUTOMATIC_RETRIES = 20;
const MAX_RETRY_WAIT_S = 60;

/** An error answer: the API's own words (`message`), the status and any Retry-After. */
export class ApiError extends Error {
  constructor(status, body, retryAfterSeconds) {
    super(body.message || `The server answered HTTP ${status}.`);
    this.status = status;
    this.code = body.error; // the stable error code, e.g. image_expired
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

async function errorFrom(response) {
  let body;
  try {
    body = await response.json();
  } catch {
    body = { message: `The server answered HTTP ${response.status} ${response.statusText}.` };
  }
  const retryAfter = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, body, retryAfter > 0 ? retryAfter : null);
}

/** Resolves after `ms`, or rejects as soon as `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16)).join("");
}

function jobUrl(jobId, action = "") {
  return `${JOBS_PATH}/${encodeURIComponent(jobId)}${action ? `/${action}` : ""}`;
}

export class TryOnClient {
  /** `currentKey()` returns the API key to send ("" for none), read at each request. */
  constructor(currentKey) {
    this.currentKey = currentKey;
  }

  /** fetch with the key; an error answer is thrown as ApiError, a network failure as is. */
  async request(url, options = {}) {
    const key = this.currentKey();
    const headers = key ? { ...options.headers, Authorization: `Bearer ${key}` } : options.headers;
    const response = await fetch(url, { ...options, headers });
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  /** POST the form; an answer with Retry-After (GPU busy, models loading) is retried after it,
   * `onRetry(error, seconds)` saying so. Returns the job document. */
  async submit(fields, { signal, onRetry }) {
    const idempotencyKey = newIdempotencyKey(); // a retried upload never makes a second job
    const headers = { "Idempotency-Key": idempotencyKey };
    return this.postRetrying(JOBS_PATH, { method: "POST", body: fields, headers, signal }, onRetry);
  }

  /** Store a photo once (POST /api/try-on/images), retried as `submit` is; returns its document,
   * whose `imageId` later try-ons send as person_image_id instead of the file. */
  async storeImage(file, { signal, onRetry }) {
    const fields = new FormData();
    fields.append("image", file);
    return this.postRetrying(IMAGES_PATH, { method: "POST", body: fields, signal }, onRetry);
  }

  async postRetrying(url, options, onRetry) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        const response = await this.request(url, options);
        return await response.json();
      } catch (error) {
        const retryable = error instanceof ApiError && error.retryAfterSeconds !== null;
        if (!retryable || attempt >= MAX_AUTOMATIC_RETRIES) throw error;
        const wait = Math.min(error.retryAfterSeconds, MAX_RETRY_WAIT_S);
        onRetry(error, wait);
        await sleep(wait * 1000, options.signal);
      }
    }
  }

  /** `onUpdate(job)` for each change until the job is final; returns the final document. The
   * events stream first; polling when it cannot be opened or ends early. */
  async follow(job, { signal, onUpdate, onConnectionLost }) {
    onUpdate(job);
    if (FINAL_STATES.has(job.status)) return job;
    try {
      const final = await this.stream(job.jobId, signal, onUpdate);
      if (final) return final;
    } catch (error) {
      if (signal.aborted || (error instanceof ApiError && error.status !== 503)) throw error;
    }
    return this.poll(job.jobId, signal, onUpdate, onConnectionLost);
  }

  /** Server-sent events over fetch: `event: job` blocks whose data is the job document. Returns
   * the final document, or null when the stream ended before it. */
  async stream(jobId, signal, onUpdate) {
    const response = await this.request(jobUrl(jobId, "events"), {
      headers: { Accept: "text/event-stream" },
      cache: "no-store",
      signal,
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let data = [];
    let eventName = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += value;
      // Lines end in \r\n, \n or \r; a \r at the very end may be half of a \r\n.
      const lines = buffer.split(/\r\n|\n|\r(?!$)/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (data.length && (eventName === "" || eventName === "job")) {
            const job = JSON.parse(data.join("\n"));
            onUpdate(job);
            if (FINAL_STATES.has(job.status)) {
              reader.cancel().catch(() => {});
              return job;
            }
          }
          data = [];
          eventName = "";
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const fieldValue = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") data.push(fieldValue);
          else if (field === "event") eventName = fieldValue;
        }
      }
    }
  }

  /** GET the job every second until it is final; a lost connection is retried (the job goes on
   * on the server), an error answer (404, 410, 401) is thrown. */
  async poll(jobId, signal, onUpdate, onConnectionLost) {
    for (;;) {
      try {
        const response = await this.request(jobUrl(jobId), { cache: "no-store", signal });
        const job = await response.json();
        onUpdate(job);
        if (FINAL_STATES.has(job.status)) return job;
      } catch (error) {
        if (error instanceof ApiError || signal.aborted) throw error;
        onConnectionLost();
      }
      await sleep(POLL_INTERVAL_MS, signal);
    }
  }

  /** Ask for the job to stop; the stream (or polling) then delivers its final document. */
  async cancel(jobId) {
    await this.request(jobUrl(jobId, "cancel"), { method: "POST" });
  }

  /** The job's latest preview (`job.preview.url`), fetched with If-None-Match `etag` (the one
   * of the preview on show): `{objectUrl, etag, step}`, or null when it has not changed (304). */
  async preview(url, etag, signal = undefined) {
    const headers = etag ? { "If-None-Match": etag } : {};
    let response;
    try {
      response = await this.request(url, { headers, signal, cache: "no-store" });
    } catch (error) {
      if (error instanceof ApiError && error.status === 304) return null; // nothing newer
      throw error;
    }
    return {
      objectUrl: URL.createObjectURL(await response.blob()),
      etag: response.headers.get("ETag"),
      step: Number(response.headers.get("Preview-Step")),
    };
  }

  /** An object URL of the image at `url` (a result or a mask), fetched with the key. */
  async blobUrl(url, signal = undefined) {
    const response = await this.request(url, { signal });
    return URL.createObjectURL(await response.blob());
  }
}
