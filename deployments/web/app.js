// imgsearch's page: one file of plain JavaScript over the app's HTTP API, no build step.
//
// Views are hash routes (#/, #/image/12, #/add, #/duplicates, #/status), so the server only
// serves index.html at "/" and the browser's back button works. Every element is built with
// DOM calls and text nodes, never innerHTML: file names, tags and OCR text come from users.
// API paths are relative ("health", not "/health"), so the page also works under a prefix.
"use strict";

// --- small helpers -------------------------------------------------------------------------

/** An element: h("a", {href: "#/", class: "x", onclick: fn}, "text", child, [children]). */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key in el && typeof value !== "string")
      el[key] = value; // checked, disabled, value
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

const $ = (selector, root = document) => root.querySelector(selector);

/** A distance or score as people read it: whole numbers stay whole (Hamming distances). */
function num(value, digits = 3) {
  return Number.isInteger(value) ? String(value) : Number(value).toFixed(digits);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// --- the API -------------------------------------------------------------------------------

/** An API answer that is not 2xx; ``message`` is its {"detail"} for the person. */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The error message of an answer: the API's {"detail": "..."}, else the status line. */
function detailOf(status, text) {
  try {
    const detail = JSON.parse(text).detail;
    if (typeof detail === "string") return detail;
    if (detail !== undefined) return JSON.stringify(detail);
  } catch {
    // not JSON (a proxy's error page, say): fall through to the status
  }
  return `the server answered ${status}${text ? ": " + text.slice(0, 200) : ""}`;
}

// --- the API key ---------------------------------------------------------------------------
// An app with API keys answers 401 without one (and /health only "up"): the page then asks
// once and keeps the key for this tab's session (sessionStorage: gone when the tab closes),
// and sends it with every request, thumbnails included. A 403 (a read key where adding or
// deleting needs a write key) asks for a write key. Without keys nothing is asked or sent.

const KEY_ITEM = "imgsearch.apiKey";
let keyInMemory = ""; // where sessionStorage is unavailable: kept until the page is left

function apiKey() {
  try {
    return sessionStorage.getItem(KEY_ITEM) || keyInMemory;
  } catch {
    return keyInMemory;
  }
}

/** Headers with ``Authorization: Bearer KEY`` added when there is a key. */
function withKey(headers) {
  const out = new Headers(headers || {});
  const key = apiKey();
  if (key) out.set("Authorization", `Bearer ${key}`);
  return out;
}

let asking = null; // requests refused at the same time share one prompt

/** Ask for a key, saying why; resolves true when one was given (then kept). */
function askKey(reason) {
  if (asking) return asking;
  const dialog = $("#key");
  const input = $("#key-input");
  $("#key-reason").textContent = reason;
  input.value = "";
  dialog.returnValue = "";
  dialog.showModal();
  asking = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = input.value.trim();
        input.value = ""; // the key stays in storage only, not in the page
        asking = null;
        if (dialog.returnValue !== "ok" || !key) return resolve(false);
        keyInMemory = key;
        try {
          sessionStorage.setItem(KEY_ITEM, key);
        } catch {
          // storage disabled: the key lives in memory for this page
        }
        resolve(true);
      },
      { once: true },
    );
  });
  return asking;
}

/** After a 401 or 403, ask for a key; true when one was given, so the request goes again. */
function keyRefused(status, text) {
  if (status === 401) {
    return askKey(
      apiKey()
        ? "The server did not accept this key. Enter another."
        : "This server asks for an API key: a read key to search, a write key to add and delete.",
    );
  }
  if (status === 403) {
    const why = detailOf(status, text);
    return askKey(`${why.charAt(0).toUpperCase()}${why.slice(1)}. Enter a write key to go on.`);
  }
  return Promise.resolve(false);
}

async function api(path, options = {}) {
  for (;;) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: withKey(options.headers) });
    } catch (err) {
      throw new ApiError(0, `the server cannot be reached (${err.message})`);
    }
    const text = await response.text();
    if (await keyRefused(response.status, text)) continue; // again, with the key given
    if (!response.ok) throw new ApiError(response.status, detailOf(response.status, text));
    return text ? JSON.parse(text) : null;
  }
}

/** POST a file to /images with upload progress (fetch cannot report it; XHR can). */
function uploadImage(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "images");
    const key = apiKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    xhr.upload.addEventListener("load", () => onProgress(1));
    xhr.addEventListener("load", async () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(JSON.parse(xhr.responseText));
      else if (await keyRefused(xhr.status, xhr.responseText))
        uploadImage(file, onProgress).then(resolve, reject);
      else reject(new ApiError(xhr.status, detailOf(xhr.status, xhr.responseText)));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "the server cannot be reached")));
    const form = new FormData();
    form.append("image", file, file.name);
    xhr.send(form);
  });
}

// What /health says, kept for the views that need to know the features.
const IMAGE_KINDS = new Set(["binary", "vector", "keypoints"]);
let health = null;

async function loadHealth() {
  health = await api("health");
  // Without a key, an app with keys says only {"status": "up"}: ask, then read it again.
  while (!health.extractors) {
    if (!(await keyRefused(401, ""))) throw new ApiError(401, "this page needs an API key");
    health = await api("health");
  }
  return health;
}

/** Features of a kind in ``kinds`` (or named in ``extra``): [{name, usable, reason}]. An
 * extractor is usable when it is available and its index is open. */
function featuresOf(kinds, extra = []) {
  const out = [];
  for (const [name, info] of Object.entries(health.extractors)) {
    if (!kinds.has(info.kind) && !extra.includes(name)) continue;
    const index = health.indexes[name] || {};
    const reason = info.available === false ? info.reason : index.error || null;
    out.push({ name, usable: !reason, reason });
  }
  return out;
}

const imageFeatures = () => featuresOf(IMAGE_KINDS);
const textSources = () => featuresOf(new Set(["text"]), ["clip"]);
// Without the thumbnail feature the page shows file names where images would be.
const thumbnailsOn = () => Boolean(health && health.extractors.thumbnail);

// --- shared pieces of the views ------------------------------------------------------------

/** A fixed square box (no layout jump while it loads) with the image's thumbnail, or its
 * file name when there is none (thumbnails off, or an image stored before them). */
function thumb(id, name, large = false) {
  const label = name || `image ${id}`;
  const box = h("div", { class: large ? "thumb large" : "thumb" });
  const placeholder = () => h("span", { class: "placeholder" }, label);
  if (!thumbnailsOn()) {
    box.append(placeholder());
    return box;
  }
  // The card around a small thumbnail already says the file name: its alt stays empty.
  const img = h("img", {
    alt: large ? label : "",
    width: 320,
    height: 320,
    loading: "lazy",
    decoding: "async",
  });
  const failed = () => box.replaceChildren(placeholder());
  img.addEventListener("error", failed, { once: true });
  const src = `images/${encodeURIComponent(id)}/thumbnail`;
  if (apiKey()) keyedImage(img, src, failed);
  else img.src = src;
  box.append(img);
  return box;
}

/** Show ``src`` in ``img``, fetched with the key (an <img> cannot send a header) once it
 * comes near the screen, as loading="lazy" would; ``failed()`` when it cannot. The browser
 * still revalidates it by its ETag (fetch uses the HTTP cache). */
function keyedImage(img, src, failed) {
  const seen = new IntersectionObserver(
    (entries) => {
      if (!entries.some((e) => e.isIntersecting)) return;
      seen.disconnect();
      fetch(src, { headers: withKey() })
        .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`status ${r.status}`))))
        .then((blob) => {
          const url = URL.createObjectURL(blob);
          img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
          img.src = url;
        })
        .catch(failed);
    },
    { rootMargin: "200px" },
  );
  seen.observe(img);
}

/** A result card that links to the image's own page; ``details``: lines under the name. */
function card(hit, ...details) {
  return h(
    "li",
    { "data-id": hit.image_id },
    h(
      "a",
      { class: "card", href: `#/image/${hit.image_id}` },
      thumb(hit.image_id, hit.file_name),
      h(
        "span",
        { class: "name", title: hit.file_name || "" },
        hit.file_name || `image ${hit.image_id}`,
      ),
      details,
    ),
  );
}

function grid(items, empty) {
  if (!items.length) return h("p", { class: "empty" }, empty);
  return h("ul", { class: "grid" }, items);
}

/** Tabs over panels: [{id, label, build}], the panel built when its tab is first shown.
 * Arrow keys move between tabs, as in the WAI-ARIA tabs pattern. */
function tabs(list, selected, onSelect) {
  const bar = h("div", { class: "tabs", role: "tablist" });
  const panel = h("div", { role: "tabpanel", tabindex: "0" });
  const buttons = list.map((tab) =>
    h(
      "button",
      {
        type: "button",
        role: "tab",
        id: `tab-${tab.id}`,
        onclick: () => show(tab.id),
        onkeydown: (e) => {
          const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
          if (!step) return;
          const i = (list.indexOf(tab) + step + list.length) % list.length;
          show(list[i].id);
          buttons[i].focus();
        },
      },
      tab.label,
    ),
  );
  function show(id) {
    const tab = list.find((t) => t.id === id) || list[0];
    buttons.forEach((b, i) => {
      const on = list[i] === tab;
      b.setAttribute("aria-selected", String(on));
      b.tabIndex = on ? 0 : -1; // one tab stop for the bar; arrows move within it
    });
    panel.setAttribute("aria-labelledby", `tab-${tab.id}`);
    panel.replaceChildren(tab.build());
    if (onSelect) onSelect(tab.id);
  }
  bar.append(...buttons);
  show(selected);
  return h("div", {}, bar, panel);
}

/** Error slots: an element with data-error="k" shows errors about field k; the one with
 * data-error="" the others (it sits beside the file or main field of its form). */
function showError(root, err) {
  clearErrors(root);
  const message = err instanceof ApiError || err instanceof Error ? err.message : String(err);
  // The API's messages start with the field they are about ("k must be between ...").
  const field = (/^(\w+)\b/.exec(message) || [])[1];
  const slot = $(`[data-error="${field}"]`, root) || $('[data-error=""]', root);
  slot.textContent = message;
  slot.hidden = false;
  // A field under a closed "Options" would hide its own error.
  const details = slot.closest("details");
  if (details) details.open = true;
}

function clearErrors(root) {
  for (const slot of root.querySelectorAll("[data-error]")) {
    slot.textContent = "";
    slot.hidden = true;
  }
}

const errorSlot = (field = "") =>
  h("p", { class: "error", role: "alert", "data-error": field, hidden: true });

/** A number field for k, with its own error slot. */
function kField(value) {
  return h(
    "label",
    { class: "field small" },
    "Results",
    h("input", {
      type: "number",
      name: "k",
      min: "1",
      max: "1000",
      value: String(value),
      required: true,
    }),
    errorSlot("k"),
  );
}

/** Checkboxes of features (unusable ones disabled, their reason beside them). */
function featureBoxes(legend, features, checked) {
  return h(
    "fieldset",
    { class: "features" },
    h("legend", {}, legend),
    features.map((f) =>
      h(
        "label",
        { class: f.usable ? "check" : "check off", title: f.reason || "" },
        h("input", {
          type: "checkbox",
          name: "features",
          value: f.name,
          checked: f.usable && checked(f.name),
          disabled: !f.usable,
        }),
        f.name,
        f.usable ? null : h("span", { class: "muted" }, " (unavailable)"),
      ),
    ),
    errorSlot("features"),
  );
}

function checkedFeatures(form) {
  return [...form.querySelectorAll('input[name="features"]:checked')].map((i) => i.value);
}

/** Where the empty collection says how to fill it. */
function noImagesYet() {
  return h(
    "div",
    { class: "note" },
    h("strong", {}, "No images yet. "),
    "Add some on ",
    h("a", { href: "#/add" }, "Add images"),
    ", or a whole folder from a terminal: ",
    h("code", {}, "make ingest DIR=~/Pictures"),
  );
}

/** The "Delete …?" dialog: resolves true when the person confirmed. */
function confirmDelete(text, button = "Delete") {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = button;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

/** A drop zone around a file input: dropped files go to ``onFiles`` like chosen ones. */
function dropZone(input, text) {
  const zone = h("div", { class: "drop" }, input, h("p", { class: "muted" }, text));
  input.addEventListener("change", () => {
    if (input.files.length) zone.onFiles([...input.files]);
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const files = [...e.dataTransfer.files];
    if (files.length) zone.onFiles(files);
  });
  return zone;
}

// A file dropped outside a drop zone would make the browser leave the page to show it.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());

// --- view: search ----------------------------------------------------------------------------

// The last image search lives here (its upload cannot live in the URL), so that going back
// from a result's page shows it again; a text search lives in the URL (#/?q=...).
let imageSearch = null; // {file, preview, k, features, answer, tab}
let lastSearchHash = "#/";

async function viewSearch(view, params) {
  const q = params.get("q") || "";
  lastSearchHash = location.hash || "#/";
  await loadHealth();
  const results = h("section", { class: "results", "aria-label": "Results" });
  const status = h("p", { class: "status", role: "status" });

  // By image: choose, drop or paste.
  const file = h("input", {
    type: "file",
    name: "image",
    accept: "image/*",
    "aria-label": "Image to search by",
  });
  const zone = dropZone(file, "Choose an image, drop one here, or paste one (Ctrl+V).");
  const visual = imageFeatures();
  const imageForm = h(
    "form",
    { class: "panel", "aria-labelledby": "by-image" },
    h("h2", { id: "by-image" }, "By image"),
    zone,
    errorSlot(),
    h("div", { class: "preview" }),
    h(
      "details",
      {},
      h("summary", {}, "Options"),
      kField(imageSearch?.k || 20),
      featureBoxes(
        "Features",
        visual,
        (n) => !imageSearch?.features || imageSearch.features.includes(n),
      ),
    ),
    h("button", { type: "submit" }, "Search"),
  );
  // Any file goes to the API, which knows which formats it reads: its message is the one shown.
  const searchBy = (chosen) => {
    if (imageSearch && imageSearch.preview) URL.revokeObjectURL(imageSearch.preview);
    imageSearch = { file: chosen, preview: URL.createObjectURL(chosen) };
    runImageSearch(imageForm, results, status);
  };
  zone.onFiles = (files) => searchBy(files[0]);
  imageForm.addEventListener("submit", (e) => {
    e.preventDefault();
    if (imageSearch && imageSearch.file) runImageSearch(imageForm, results, status);
    else showError(imageForm, "choose an image to search by first");
  });
  // Paste anywhere on this view: the first image on the clipboard is the query.
  onPaste = (e) => {
    const item = [...e.clipboardData.items].find(
      (i) => i.kind === "file" && i.type.startsWith("image/"),
    );
    if (!item) return;
    e.preventDefault();
    const blob = item.getAsFile();
    searchBy(new File([blob], blob.name || "pasted image", { type: blob.type }));
  };

  // By text.
  const sources = textSources();
  const textForm = h(
    "form",
    { class: "panel", "aria-labelledby": "by-text" },
    h("h2", { id: "by-text" }, "By text"),
    h(
      "div",
      { class: "row" },
      h("input", {
        type: "search",
        name: "q",
        value: q,
        "aria-label": "Words to search for",
        placeholder: "e.g. bridge, wine",
        maxlength: "1000",
      }),
      h("button", { type: "submit" }, "Search"),
    ),
    errorSlot(),
    h(
      "details",
      {},
      h("summary", {}, "Options"),
      kField(params.get("k") || 20),
      featureBoxes(
        "Sources",
        sources,
        (n) => !params.get("features") || params.get("features").split(",").includes(n),
      ),
    ),
  );
  textForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const words = textForm.q.value.trim();
    if (!words) return showError(textForm, "type a few words to search for");
    const next = new URLSearchParams({ q: words, k: textForm.k.value });
    const chosen = checkedFeatures(textForm);
    // All usable sources ticked: leave it to the API's default, which also names the
    // unavailable ones (CLIP without weights) in its answer.
    if (chosen.length !== sources.filter((s) => s.usable).length)
      next.set("features", chosen.join(","));
    go(`#/?${next}`);
  });

  view.append(
    h("h1", { tabindex: "-1" }, "Search"),
    health.images === 0 ? noImagesYet() : "",
    h("div", { class: "two" }, imageForm, textForm),
    status,
    results,
  );

  if (q) {
    await runTextSearch(textForm, results, status, params);
  } else if (imageSearch && imageSearch.answer) {
    showPreview(imageForm);
    showImageResults(results, status);
  } else if (imageSearch) {
    showPreview(imageForm); // a search that failed: its image stays chosen for another try
  }
}

let onPaste = null;
document.addEventListener("paste", (e) => {
  if (onPaste) onPaste(e);
});

function showPreview(form) {
  const box = $(".preview", form);
  box.replaceChildren(
    h("img", {
      src: imageSearch.preview,
      alt: `Query: ${imageSearch.file.name}`,
      width: 96,
      height: 96,
    }),
    h("span", { class: "muted" }, imageSearch.file.name),
  );
}

async function runImageSearch(form, results, status) {
  clearErrors(form);
  // Searching by image replaces a text search: the URL no longer names one.
  if (location.hash !== "#/") history.replaceState(null, "", "#/");
  lastSearchHash = "#/";
  imageSearch.k = Number(form.k.value) || 20;
  imageSearch.features = checkedFeatures(form);
  imageSearch.answer = null;
  showPreview(form);
  if (!imageSearch.features.length) return showError(form, "features: tick at least one");
  const body = new FormData();
  body.append("image", imageSearch.file, imageSearch.file.name || "image");
  body.append("k", String(imageSearch.k));
  body.append("features", imageSearch.features.join(","));
  status.textContent = "Searching…";
  results.replaceChildren();
  const mine = imageSearch;
  try {
    const answer = await api("search/image", { method: "POST", body });
    if (mine !== imageSearch) return; // a newer search started meanwhile
    mine.answer = answer;
    mine.tab = "fused";
    showImageResults(results, status);
  } catch (err) {
    if (mine !== imageSearch) return;
    status.textContent = "";
    showError(form, err);
  }
}

/** The lists of one answer as tabs: the fused ranking, then each feature's own list; nothing
 * when every list is empty (the status line says so). */
function answerTabs(answer, selected, onSelect) {
  if (!answer.results.length && Object.values(answer.by_feature).every((hits) => !hits.length))
    return "";
  const fused = answer.results.map((hit) =>
    card(
      hit,
      h(
        "span",
        { class: "meta" },
        `score ${num(hit.score, 4)}`,
        hit.duplicate ? h("span", { class: "badge" }, "near-duplicate") : null,
      ),
      h(
        "span",
        { class: "found" },
        Object.entries(hit.matches).map(([feature, m]) =>
          h("span", { class: "chip" }, `${feature} #${m.rank}`),
        ),
      ),
    ),
  );
  const list = [
    {
      id: "fused",
      label: `Fused (${answer.results.length})`,
      build: () => grid(fused, "No results."),
    },
  ];
  for (const [feature, hits] of Object.entries(answer.by_feature)) {
    list.push({
      id: feature,
      label: `${feature} (${hits.length})`,
      build: () =>
        grid(
          hits.map((hit) =>
            card(hit, h("span", { class: "meta" }, `distance ${num(hit.distance)}`)),
          ),
          `${feature} found nothing.`,
        ),
    });
  }
  return tabs(list, selected, onSelect);
}

/** What a search left out: shards that did not answer, sources without their model. */
function leftOut(answer) {
  const notes = [];
  for (const [source, why] of Object.entries(answer.unavailable || {})) {
    notes.push(h("li", {}, h("strong", {}, source), ": ", why));
  }
  for (const [feature, shards] of Object.entries(answer.partial || {})) {
    notes.push(
      h(
        "li",
        {},
        h("strong", {}, feature),
        `: shards ${[].concat(shards).join(", ")} did not answer`,
      ),
    );
  }
  return notes.length
    ? h("div", { class: "note" }, h("p", {}, "Left out of these results:"), h("ul", {}, notes))
    : null;
}

function showImageResults(results, status) {
  const { answer } = imageSearch;
  status.textContent = answer.results.length
    ? `${plural(answer.results.length, "result")} for ${imageSearch.file.name}.`
    : "No results: nothing stored looks like this image.";
  results.replaceChildren(
    leftOut(answer) || "",
    answerTabs(answer, imageSearch.tab, (id) => (imageSearch.tab = id)),
  );
}

async function runTextSearch(form, results, status, params) {
  const query = new URLSearchParams({ q: params.get("q"), k: params.get("k") || "20" });
  if (params.get("features")) query.set("features", params.get("features"));
  status.textContent = "Searching…";
  try {
    const answer = await api(`search/text?${query}`);
    status.textContent = answer.results.length
      ? `${plural(answer.results.length, "result")} for “${params.get("q")}”.`
      : `No results for “${params.get("q")}”.`;
    results.replaceChildren(leftOut(answer) || "", answerTabs(answer, "fused"));
  } catch (err) {
    status.textContent = "";
    showError(form, err);
  }
}

// --- view: one image -----------------------------------------------------------------------

async function viewImage(view, params, id) {
  await loadHealth();
  const back = h("a", { href: lastSearchHash, class: "back" }, "← Back to search");
  let info;
  try {
    info = await api(`images/${id}`);
  } catch (err) {
    view.append(
      back,
      h("h1", { tabindex: "-1" }, `Image ${id}`),
      h("p", { class: "error" }, err.message),
    );
    return;
  }
  document.title = `${info.file_name} – imgsearch`;
  const status = h("p", { class: "status", role: "status" });
  const remove = h("button", { type: "button", class: "danger" }, "Delete image");
  remove.addEventListener("click", async () => {
    const question = `Delete “${info.file_name}” (image ${id})? Its features are removed for good.`;
    if (!(await confirmDelete(question))) return;
    try {
      await api(`images/${id}`, { method: "DELETE" });
    } catch (err) {
      status.textContent = `Not deleted: ${err.message}`;
      return;
    }
    forget([Number(id)]);
    go(lastSearchHash);
  });

  const tags = info.tags.length
    ? h(
        "ul",
        { class: "tags" },
        info.tags.map((t) =>
          h(
            "li",
            { class: "chip", title: `score ${num(t.score)}` },
            t.label,
            h("span", { class: "muted" }, ` ${Math.round(t.score * 100)}%`),
          ),
        ),
      )
    : h("p", { class: "muted" }, "No tags.");

  // More like this: one stored-image search per feature the image has.
  const similar = imageFeatures().filter((f) => f.usable && info.features.includes(f.name));
  const more = similar.length
    ? tabs(
        similar.map((f) => ({ id: f.name, label: f.name, build: () => similarList(id, f.name) })),
        similar[0].name,
      )
    : h("p", { class: "muted" }, "This image has no feature to compare by.");

  view.append(
    back,
    h(
      "div",
      { class: "detail" },
      thumb(info.image_id, info.file_name, true),
      h(
        "div",
        {},
        h("h1", { tabindex: "-1" }, info.file_name),
        h(
          "p",
          { class: "muted" },
          `Image ${info.image_id} · features: ${info.features.join(", ") || "none"}`,
        ),
        h("h2", {}, "Tags"),
        tags,
        h("h2", {}, "Caption"),
        info.caption ? h("p", {}, info.caption) : h("p", { class: "muted" }, "No caption."),
        h("h2", {}, "Text in the image"),
        info.text
          ? h("p", { class: "ocr" }, info.text)
          : h("p", { class: "muted" }, "No text found."),
        remove,
        status,
      ),
    ),
    h("h2", {}, "More like this"),
    more,
  );
}

function similarList(id, feature) {
  const box = h("div", {}, h("p", { class: "status" }, "Loading…"));
  api(`search/similar/${id}?feature=${encodeURIComponent(feature)}&k=20`)
    .then((answer) => {
      // A search by a stored image may list the image itself: it is not "more like" it.
      const hits = answer.results.filter((hit) => String(hit.image_id) !== String(id));
      box.replaceChildren(
        grid(
          hits.map((hit) =>
            card(hit, h("span", { class: "meta" }, `distance ${num(hit.distance)}`)),
          ),
          `${feature} finds no other image.`,
        ),
      );
    })
    .catch((err) => box.replaceChildren(h("p", { class: "error" }, err.message)));
  return box;
}

/** Deleted images leave the remembered image search too. */
function forget(ids) {
  if (!imageSearch || !imageSearch.answer) return;
  const gone = (hit) => !ids.includes(hit.image_id);
  const answer = imageSearch.answer;
  answer.results = answer.results.filter(gone);
  for (const feature of Object.keys(answer.by_feature))
    answer.by_feature[feature] = answer.by_feature[feature].filter(gone);
}

// --- view: add images ----------------------------------------------------------------------

// Uploads at a time: two keep the extractors busy without queueing many requests behind
// one slow file (OCR, captions take seconds).
const PARALLEL_UPLOADS = 2;
const queue = [];
let uploading = 0;
// The add view's list and summary line: the list is kept across visits (uploads go on while
// another view is shown), the summary is the current view's.
let uploadList = null;
let uploadSummary = null;

async function viewAdd(view) {
  await loadHealth();
  const input = h("input", {
    type: "file",
    name: "images",
    accept: "image/*",
    multiple: true,
    "aria-label": "Images to add",
  });
  const zone = dropZone(
    input,
    "Choose one or many images, or drop them here. Each is stored with all its features.",
  );
  if (!uploadList) uploadList = h("ol", { class: "uploads", "aria-label": "Uploads" });
  const summary = h("p", { class: "status", role: "status" });
  uploadSummary = summary;
  zone.onFiles = (files) => {
    for (const file of files) enqueue(file);
    input.value = ""; // choosing the same files again adds them again
  };
  view.append(
    h("h1", { tabindex: "-1" }, "Add images"),
    h("p", { class: "muted", id: "stored" }, storedText()),
    zone,
    summary,
    uploadList,
  );
  updateSummary();
}

function storedText() {
  return typeof health.images === "number" ? `${plural(health.images, "image")} stored.` : "";
}

function enqueue(file) {
  const bar = h("progress", { max: "1", value: "0", "aria-label": `Upload of ${file.name}` });
  const state = h("span", { class: "state" }, "waiting");
  const row = h("li", { class: "upload" }, h("span", { class: "name" }, file.name), bar, state);
  uploadList.append(row);
  queue.push({ file, bar, state, row });
  pump();
}

function pump() {
  while (uploading < PARALLEL_UPLOADS && queue.length) {
    const job = queue.shift();
    uploading += 1;
    job.state.textContent = "uploading";
    job.row.dataset.state = "busy";
    uploadImage(job.file, (fraction) => {
      job.bar.value = fraction;
      // Sent: the server now computes the features; an indeterminate bar says "working".
      if (fraction >= 1) {
        job.bar.removeAttribute("value");
        job.state.textContent = "computing features";
      }
    })
      .then((added) => {
        job.bar.value = 1;
        job.row.dataset.state = "ok";
        const failed = Object.entries(added.features).filter(([, s]) => s !== "ok");
        job.state.replaceChildren(
          "added as ",
          h("a", { href: `#/image/${added.image_id}` }, `image ${added.image_id}`),
          failed.length
            ? h(
                "span",
                { class: "muted" },
                ` (without ${failed.map(([n, s]) => `${n}: ${s}`).join("; ")})`,
              )
            : "",
        );
      })
      .catch((err) => {
        job.bar.value = 0;
        job.row.dataset.state = "error";
        job.state.replaceChildren(h("span", { class: "error" }, err.message));
      })
      .finally(() => {
        uploading -= 1;
        updateSummary();
        pump();
        // All done: the stored count is news (other clients may have added meanwhile too).
        if (!uploading && !queue.length) {
          loadHealth()
            .then(() => {
              const line = $("#stored");
              if (line) line.textContent = storedText();
            })
            .catch(() => {}); // only a count: each upload's own result is already shown
        }
      });
  }
  updateSummary();
}

function updateSummary() {
  const summary = uploadSummary;
  if (!uploadList || !summary) return;
  const rows = [...uploadList.children];
  if (!rows.length) return;
  const count = (s) => rows.filter((r) => r.dataset.state === s).length;
  const done = count("ok") + count("error");
  summary.textContent =
    `${done} of ${rows.length} done` +
    (count("error") ? `, ${count("error")} failed` : "") +
    (done === rows.length ? "." : "…");
}

// --- view: duplicates ----------------------------------------------------------------------

async function viewDuplicates(view, params) {
  await loadHealth();
  // Features that find duplicates by distance; phash (Hamming) is the usual one.
  const features = imageFeatures().filter((f) => f.usable && f.name !== "local");
  const feature = params.get("feature") || "phash";
  const form = h(
    "form",
    { class: "panel row wrap-row" },
    h(
      "label",
      { class: "field small" },
      "Threshold",
      h("input", {
        type: "number",
        name: "threshold",
        min: "0",
        step: "any",
        value: params.get("threshold") || "",
        placeholder: "default",
      }),
      errorSlot("threshold"),
    ),
    h(
      "label",
      { class: "field small" },
      "Feature",
      h(
        "select",
        { name: "feature" },
        features.map((f) => h("option", { value: f.name, selected: f.name === feature }, f.name)),
      ),
      errorSlot("feature"),
    ),
    h("button", { type: "submit" }, "Find duplicates"),
    errorSlot(),
  );
  // A threshold is in its feature's own unit (phash: bits): another feature starts from its
  // default.
  form.feature.addEventListener("change", () => (form.threshold.value = ""));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const next = new URLSearchParams({ feature: form.feature.value, page: "1" });
    if (form.threshold.value !== "") next.set("threshold", form.threshold.value);
    go(`#/duplicates?${next}`);
  });
  const status = h("p", { class: "status", role: "status" });
  const groups = h("div", { class: "groups" });
  view.append(
    h("h1", { tabindex: "-1" }, "Duplicates"),
    h(
      "p",
      { class: "muted" },
      "Groups of images within the threshold of each other (smaller is stricter). " +
        "Tick the ones to keep; the rest of a group can be deleted.",
    ),
    health.images === 0 ? noImagesYet() : "",
    form,
    status,
    groups,
  );

  const query = new URLSearchParams({ feature, page: params.get("page") || "1", page_size: "20" });
  if (params.get("threshold")) query.set("threshold", params.get("threshold"));
  status.textContent = "Looking for duplicates…";
  let answer;
  try {
    answer = await api(`duplicates?${query}`);
  } catch (err) {
    status.textContent = "";
    showError(form, err);
    return;
  }
  // The answer says which threshold it used (the app's default when none was given).
  if (answer.threshold !== undefined && form.threshold.value === "")
    form.threshold.value = String(answer.threshold);
  status.textContent = answer.total_groups
    ? `${plural(answer.total_groups, "group")} of near-duplicates.`
    : "No duplicates at this threshold.";
  answer.groups.forEach((group, i) =>
    groups.append(duplicateGroup(group, (answer.page - 1) * 20 + i + 1, () => route())),
  );
  if (answer.pages > 1) groups.append(pager(answer.page, answer.pages, query));
}

function duplicateGroup(group, number, reload) {
  const keep = new Set([group.images[0].image_id]); // the first is kept unless changed
  const note = h("p", { class: "status", role: "status" });
  const button = h("button", { type: "button", class: "danger" });
  const refresh = () => {
    const rest = group.images.length - keep.size;
    button.textContent = `Delete ${plural(rest, "other")}`;
    button.disabled = rest === 0 || keep.size === 0;
    note.textContent = keep.size === 0 ? "Keep at least one." : "";
  };
  const items = group.images.map((img) =>
    h(
      "li",
      { "data-id": img.image_id },
      h(
        "div",
        { class: "card" },
        h(
          "a",
          { href: `#/image/${img.image_id}`, class: "plain" },
          thumb(img.image_id, img.file_name),
          h("span", { class: "name", title: img.file_name }, img.file_name),
        ),
        h(
          "label",
          { class: "check" },
          h("input", {
            type: "checkbox",
            checked: keep.has(img.image_id),
            onchange: (e) => {
              if (e.target.checked) keep.add(img.image_id);
              else keep.delete(img.image_id);
              refresh();
            },
          }),
          "Keep",
        ),
      ),
    ),
  );
  button.addEventListener("click", async () => {
    const doomed = group.images.filter((img) => !keep.has(img.image_id));
    const names = doomed.map((img) => img.file_name).join(", ");
    const question = `Delete ${plural(doomed.length, "image")} (${names})? This cannot be undone.`;
    if (!(await confirmDelete(question))) return;
    const failed = [];
    for (const img of doomed) {
      try {
        await api(`images/${img.image_id}`, { method: "DELETE" });
      } catch (err) {
        failed.push(`${img.file_name}: ${err.message}`);
      }
    }
    forget(doomed.map((img) => img.image_id));
    if (failed.length) note.textContent = `Not deleted: ${failed.join("; ")}`;
    else reload();
  });
  refresh();
  const ds = group.pairs.map(([, , d]) => d);
  const [low, high] = [Math.min(...ds), Math.max(...ds)];
  const distances = !ds.length
    ? ""
    : low === high
      ? ` · distance ${num(low)}`
      : ` · distances ${num(low)} to ${num(high)}`;
  return h(
    "section",
    { class: "group", "aria-label": `Group ${number}` },
    h(
      "h2",
      {},
      `Group ${number}`,
      h("span", { class: "muted" }, ` · ${plural(group.images.length, "image")}${distances}`),
    ),
    h("ul", { class: "grid" }, items),
    h("div", { class: "row" }, button, note),
  );
}

function pager(page, pages, query) {
  const link = (n, text) => {
    const q = new URLSearchParams(query);
    q.set("page", String(n));
    return h("a", { href: `#/duplicates?${q}`, class: "button secondary" }, text);
  };
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    page > 1 ? link(page - 1, "← Previous") : null,
    h("span", {}, `Page ${page} of ${pages}`),
    page < pages ? link(page + 1, "Next →") : null,
  );
}

// --- view: status --------------------------------------------------------------------------

async function viewStatus(view) {
  await loadHealth();
  // An index waiting for its model (weights missing: the extractors below say how to get
  // them) is a state of this install, not an error.
  const waiting = (name, index) => {
    const info = health.extractors[name] || {};
    return info.available === false && !info.error && (index.error || "").includes(info.reason);
  };
  const rows = Object.entries(health.indexes).map(([name, index]) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, name),
      h(
        "td",
        {},
        "count" in index
          ? String(index.count)
          : waiting(name, index)
            ? h("span", { class: "muted" }, "none: opens with its model (below)")
            : h("span", { class: "error" }, index.error || "unknown"),
      ),
    ),
  );
  const extractors = Object.values(health.extractors);
  const broken = extractors.filter((e) => e.available === false);
  view.append(
    h("h1", { tabindex: "-1" }, "Status"),
    h(
      "p",
      { class: "big" },
      h(
        "strong",
        {},
        typeof health.images === "number" ? plural(health.images, "image") : health.images,
      ),
      ` · status ${health.status}`,
    ),
    h("h2", {}, "Indexes"),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h("tr", {}, h("th", { scope: "col" }, "Feature"), h("th", { scope: "col" }, "Images")),
        ),
        h("tbody", {}, rows),
      ),
    ),
    h("h2", {}, "Extractors"),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        {},
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Name", "Kind", "Device", "Available"].map((c) => h("th", { scope: "col" }, c)),
          ),
        ),
        h(
          "tbody",
          {},
          extractors.map((e) =>
            h(
              "tr",
              {},
              h("th", { scope: "row" }, e.name || ""),
              h("td", {}, e.kind || ""),
              h("td", {}, e.device || ""),
              h("td", {}, e.available === false ? "no" : "yes"),
            ),
          ),
        ),
      ),
    ),
    broken.length
      ? h(
          "div",
          { class: "unavailable" },
          h("h2", {}, "Unavailable, and how to fix it"),
          h(
            "ul",
            {},
            broken.map((e) =>
              h(
                "li",
                {},
                h("strong", {}, e.name || ""),
                h("pre", {}, e.reason || "no reason given"),
              ),
            ),
          ),
        )
      : h("p", {}, "Every extractor is available."),
  );
}

// --- the router ----------------------------------------------------------------------------

const ROUTES = [
  [/^\/?$/, viewSearch, "search", "Search"],
  [/^\/image\/(\d+)$/, viewImage, "search", "Image"],
  [/^\/add$/, viewAdd, "add", "Add images"],
  [/^\/duplicates$/, viewDuplicates, "duplicates", "Duplicates"],
  [/^\/status$/, viewStatus, "status", "Status"],
];

/** Go to a hash route; the same one again runs it again (a repeated search, a reload). */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

let firstRoute = true;

async function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  const main = $("#main");
  onPaste = null;
  const match = ROUTES.map(([re, ...rest]) => [re.exec(path), ...rest]).find(([m]) => m);
  const view = h("div", { class: "view" });
  main.replaceChildren(view);
  if (!match) {
    view.append(
      h("h1", { tabindex: "-1" }, "Not found"),
      h("p", {}, "No such page. ", h("a", { href: "#/" }, "Search")),
    );
    return;
  }
  const [m, render, nav, title] = match;
  document.title = `${title} – imgsearch`;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    await render(view, params, ...m.slice(1));
  } catch (err) {
    view.append(
      h("p", { class: "error", role: "alert" }, `This page could not load: ${err.message}`),
    );
  }
  // After a navigation, keyboard and screen-reader users start at the new view's heading.
  if (!firstRoute && view.isConnected) {
    const heading = $("h1", view);
    if (heading) heading.focus({ preventScroll: true });
  }
  firstRoute = false;
}

// The skip link would otherwise become a hash route.
$("#skip").addEventListener("click", (e) => {
  e.preventDefault();
  $("#main").focus();
});
window.addEventListener("hashchange", route);
route();
