// watchd's page (docs/page.md): plain JavaScript over the JSON API, no framework, no build.
//
// Rules this file keeps:
// - Data from the daemon (file names, job names, error texts) only ever reaches the page as
//   text: textContent and createElement, never innerHTML, so no name can run a script.
// - The token lives in sessionStorage (this tab only) and travels in the Authorization
//   header, never in a URL. Pictures and downloads are fetched with it and shown as blobs.
// - The page asks the daemon for news only while it is visible: a hidden tab costs nothing.
"use strict";

const TOKEN_KEY = "watchd.token";
const POLL_MS = 2000;
const SCOPES = ["read", "submit", "admin"];
const STATUSES = ["queued", "processing", "completed", "failed", "cancelled"];
const FORMATS = ["png", "webp", "jpeg", "mask"];

const app = {
  generation: 0, // bumped on every view change: stale refreshes stop themselves
  timer: null,
  refresh: null,
  whoami: null,
  blobs: new Map(), // "job/file/side" -> object URL of a thumbnail already fetched
  lastRender: "",
  pollFailed: false, // the last refresh failed: its message goes once one works again
};

// --- talking to the daemon -----------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authHeaders() {
  const headers = new Headers();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", "Bearer " + token);
  return headers;
}

async function detailOf(response) {
  try {
    const body = await response.json();
    const detail = body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return JSON.stringify(body);
  } catch (e) {
    return response.statusText || "no details";
  }
}

function explain(status, detail, headers) {
  if (status === 0) return "The watchd daemon cannot be reached. Is it running? (" + detail + ")";
  if (status === 401) return "The token was not accepted: " + detail;
  if (status === 403) return "Your token may not do this: " + detail;
  if (status === 413) return "Too large: " + detail;
  if (status === 429) {
    const wait = headers && headers.get("Retry-After");
    return "The queue is full: " + detail + (wait ? " (try again in " + wait + " s)" : "");
  }
  if (status === 404) return "Not found: " + detail;
  if (status >= 500) return "The daemon could not answer (" + status + "): " + detail;
  return detail + " (" + status + ")";
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: authHeaders(), cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, explain(0, String(e.message || e)));
  }
  if (response.ok) return response;
  const detail = await detailOf(response);
  if (response.status === 401) {
    const had = Boolean(sessionStorage.getItem(TOKEN_KEY));
    askToken(had ? "The token was not accepted (" + detail + "). Enter another one." : "This daemon needs a token.");
    throw new ApiError(401, had ? explain(401, detail) : "This daemon needs a token: enter it below.");
  }
  throw new ApiError(response.status, explain(response.status, detail, response.headers));
}

async function json(path, options) {
  return (await api(path, options)).json();
}

// --- messages and the token ------------------------------------------------------------------

function say(text, kind) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = "message" + (kind === "info" ? " info" : "");
  box.hidden = !text;
}

function fail(error) {
  say(error instanceof ApiError ? error.message : "Something went wrong on the page: " + error);
}

function askToken(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  app.whoami = null;
  const form = document.getElementById("token-form");
  document.getElementById("token-reason").textContent = reason;
  if (form.hidden) {
    form.hidden = false;
    document.getElementById("token-input").focus();
  }
}

function setupTokenForm() {
  const form = document.getElementById("token-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-input");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    form.hidden = true;
    say("");
    route();
  });
}

async function learnWho() {
  if (app.whoami) return app.whoami;
  app.whoami = await json("/auth/whoami");
  const who = document.getElementById("who");
  who.textContent = app.whoami.tokens_required
    ? "Signed in as " + app.whoami.name + " (" + app.whoami.scope + ")"
    : "No token needed (" + app.whoami.scope + ")";
  return app.whoami;
}

function may(scope) {
  return app.whoami !== null && SCOPES.indexOf(app.whoami.scope) >= SCOPES.indexOf(scope);
}

// --- small DOM helpers: text only --------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "className") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function progressBar(percent, label) {
  const bar = el("progress", { max: "100", value: String(percent), "aria-label": label });
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute("aria-valuetext", percent + " %");
  return bar;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  if (seconds < 60) return Math.round(seconds) + " s";
  if (seconds < 3600) return Math.round(seconds / 60) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

function age(iso) {
  return iso ? duration((Date.now() - Date.parse(iso)) / 1000) + " ago" : "–";
}

function perMinute(perSecond) {
  return (perSecond * 60).toFixed(1) + " /min";
}

function setView(title, ...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(el("h2", { text: title }), ...nodes);
}

// --- refreshing while visible --------------------------------------------------------------

function poll(refresh) {
  app.refresh = refresh;
  app.lastRender = "";
  const generation = app.generation;
  const tick = async () => {
    app.timer = null;
    if (generation !== app.generation || document.visibilityState !== "visible") return;
    let again = true;
    try {
      again = (await refresh()) !== false;
      if (app.pollFailed) say(""); // the daemon answers again
      app.pollFailed = false;
    } catch (error) {
      fail(error);
      app.pollFailed = true;
      if (error instanceof ApiError && error.status === 401) again = false;
    }
    if (again && generation === app.generation && document.visibilityState === "visible") {
      app.timer = setTimeout(tick, POLL_MS);
    }
  };
  tick();
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && app.timer === null && app.refresh) {
    poll(app.refresh);
  } else if (document.visibilityState !== "visible" && app.timer !== null) {
    clearTimeout(app.timer);
    app.timer = null;
  }
});

function changed(data) {
  const key = JSON.stringify(data);
  if (key === app.lastRender) return false;
  app.lastRender = key;
  return true;
}

// --- the views -----------------------------------------------------------------------------

function route() {
  app.generation += 1;
  if (app.timer !== null) clearTimeout(app.timer);
  app.timer = null;
  app.refresh = null;
  for (const url of app.blobs.values()) URL.revokeObjectURL(url);
  app.blobs.clear();
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const current = path.startsWith("/job") ? "jobs" : path === "/upload" ? "upload" : "overview";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const generation = app.generation;
  learnWho()
    .then(() => {
      if (generation !== app.generation) return;
      say("");
      const job = /^\/job\/(\d+)$/.exec(path);
      if (job) return showJob(Number(job[1]));
      if (path === "/jobs") return showJobs(params);
      if (path === "/upload") return showUpload();
      return showOverview();
    })
    .catch(fail);
}

// overview

function card(label, value, className) {
  return el("div", { className: "card" }, el("dt", { text: label }), el("dd", { text: value, className }));
}

function chart(counts) {
  const most = Math.max(1, ...counts);
  const total = counts.reduce((a, b) => a + b, 0);
  const bars = el("div", {
    className: "chart",
    role: "img",
    "aria-label": total + " files finished in the last hour; busiest minute " + Math.max(0, ...counts),
  });
  for (const n of counts) {
    const bar = el("div", { title: n + " files" });
    bar.style.height = (100 * n) / most + "%";
    bars.append(bar);
  }
  return el(
    "figure",
    { className: "chart-figure" },
    el("figcaption", { text: "Files done per minute, last hour (" + total + " in all)" }),
    bars,
    el("div", { className: "chart-axis" }, el("span", { text: "60 min ago" }), el("span", { text: "now" })),
  );
}

function where(stats) {
  const hosts = Object.entries((stats.pool && stats.pool.workers_by_host) || {});
  const list = hosts.map(([host, n]) => host + " (" + n + ")").join(", ");
  return (stats.backend === "dask" ? "Dask: " : "local: ") + (list || "–");
}

function renderOverview(stats) {
  const state = stats.paused ? "paused" : "running";
  const files = stats.files || {};
  const waiting = (files.pending || 0) + (files.queued || 0);
  const providers = Object.entries(stats.providers || {}).map(([m, p]) => m + " on " + p.replace("ExecutionProvider", ""));
  const cards = el(
    "dl",
    { className: "cards" },
    card("State", state, "state-" + state),
    card("Workers busy", stats.workers.busy + " of " + stats.workers.total),
    card("Where", where(stats)),
    card("Models", providers.join(", ") || (stats.models || []).join(", ") || "–"),
    card("Queue", waiting + " waiting, " + (files.running || 0) + " running"),
    card("Throughput", perMinute(stats.throughput.files_per_second_1m) + " (1 min), " + perMinute(stats.throughput.files_per_second_15m) + " (15 min)"),
    card("Latency p50 / p95", duration(stats.latency_seconds.p50) + " / " + duration(stats.latency_seconds.p95)),
    card("Done / failed", (files.done || 0) + " / " + (files.failed || 0)),
  );
  const error = stats.last_error;
  const lastError = el(
    "section",
    { "aria-labelledby": "last-error-title" },
    el("h3", { id: "last-error-title", text: "Last error" }),
    error
      ? el("p", { className: "last-error" }, (error.at || "") + " · " + (error.watch || "") + " · " + (error.file || "") + ": " + (error.reason || ""))
      : el("p", { className: "empty", text: "None since the daemon started." }),
  );
  setView("Overview", cards, chart(stats.files_per_minute_1h || []), lastError);
}

function showOverview() {
  poll(async () => {
    const stats = await json("/queue/stats");
    const shown = { ...stats, generated_at: null, uptime_seconds: null };
    if (changed(shown)) renderOverview(stats);
  });
}

// jobs

function eta(job, rate) {
  if (job.finished_at) return "done";
  if (job.eta_seconds !== null && job.eta_seconds !== undefined) return duration(job.eta_seconds);
  const left = job.progress.total - job.progress.processed;
  return rate > 0 ? duration(left / rate) : "–";
}

function jobRow(job, rate) {
  const link = el("a", { href: "#/job/" + job.job_id, text: job.name || "job " + job.job_id });
  return el(
    "tr",
    { "data-job": job.job_id },
    el("td", { className: "name", "data-label": "Job" }, link),
    el("td", { "data-label": "Watch", text: job.watch }),
    el("td", { "data-label": "Status", text: job.status, className: "state-" + job.status }),
    el("td", { "data-label": "Progress" }, progressBar(job.progress.percent, "progress of " + (job.name || job.job_id)), " " + job.progress.processed + "/" + job.progress.total),
    el("td", { "data-label": "Priority", text: job.priority }),
    el("td", { "data-label": "Age", text: age(job.created_at) }),
    el("td", { "data-label": "ETA", text: eta(job, rate) }),
  );
}

function select(id, label, values, chosen, anyLabel) {
  const box = el("select", { id, name: id });
  box.append(el("option", { value: "", text: anyLabel }));
  for (const value of values) box.append(el("option", { value, text: value, selected: value === chosen }));
  return el("label", { for: id }, label, box);
}

function showJobs(params) {
  const watch = params.get("watch") || "";
  const status = params.get("status") || "";
  const before = params.get("before") || "";
  const go = (changes) => {
    const next = new URLSearchParams({ watch, status, ...changes });
    for (const [k, v] of [...next.entries()]) if (!v) next.delete(k);
    location.hash = "#/jobs" + (next.toString() ? "?" + next : "");
  };
  poll(async () => {
    const query = new URLSearchParams({ limit: "25" });
    if (watch) query.set("watch", watch);
    if (status) query.set("status", status);
    if (before) query.set("before", before);
    const [page, stats] = await Promise.all([json("/queue/jobs?" + query), json("/queue/stats")]);
    const rate = stats.throughput.files_per_second_1m || stats.throughput.files_per_second_15m;
    if (!changed({ page, rate })) return;
    const filters = el(
      "form",
      { className: "filters", role: "search", "aria-label": "Filter jobs" },
      select("filter-watch", "Watch", Object.keys(stats.watches || {}), watch, "all watches"),
      select("filter-status", "Status", STATUSES, status, "any status"),
    );
    filters.addEventListener("change", () => go({ watch: filters.elements["filter-watch"].value, status: filters.elements["filter-status"].value, before: "" }));
    const rows = page.jobs.map((job) => jobRow(job, rate));
    const table = rows.length
      ? el(
          "table",
          { className: "jobs-table" },
          el("thead", {}, el("tr", {}, ...["Job", "Watch", "Status", "Progress", "Priority", "Age", "ETA"].map((t) => el("th", { scope: "col", text: t })))),
          el("tbody", {}, ...rows),
        )
      : el("p", { className: "empty", text: "No jobs here yet." });
    const pager = el(
      "div",
      { className: "pager" },
      before ? el("button", { type: "button", className: "secondary", text: "Newest", onclick: () => go({ before: "" }) }) : null,
      page.next_before ? el("button", { type: "button", className: "secondary", text: "Older", onclick: () => go({ before: String(page.next_before) }) }) : null,
    );
    const focused = document.activeElement && document.activeElement.id;
    setView("Jobs", filters, table, pager);
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
  });
}

// one job

async function download(path, name, button) {
  button.disabled = true;
  try {
    const blob = await (await api(path)).blob();
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (error) {
    fail(error);
  } finally {
    button.disabled = false;
  }
}

const thumbObserver = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (entry.isIntersecting) {
          thumbObserver.unobserve(entry.target);
          loadThumb(entry.target);
        }
      }
    }, { rootMargin: "200px" })
  : null;

async function loadThumb(box) {
  const key = box.dataset.key;
  const generation = app.generation;
  try {
    let url = app.blobs.get(key);
    if (!url) {
      const blob = await (await api(box.dataset.src)).blob();
      if (generation !== app.generation) return;
      url = URL.createObjectURL(blob);
      app.blobs.set(key, url);
    }
    box.replaceChildren(el("img", { src: url, alt: box.dataset.alt }));
  } catch (error) {
    box.replaceChildren(el("span", { className: "none", text: error instanceof ApiError ? error.message : String(error) }));
  }
}

function thumb(job, file, side) {
  const caption = side === "before" ? "Before" : "After";
  const box = el("div", {
    className: "thumb" + (side === "after" ? " checker" : ""),
    "data-key": job.job_id + "/" + file.id + "/" + side,
    "data-src": "/queue/job/" + job.job_id + "/files/" + file.id + "/thumbnail?side=" + side,
    "data-alt": caption + ": " + file.name,
  });
  if (side === "after" && file.state !== "done") {
    box.append(el("span", { className: "none", text: file.state === "failed" ? "no cutout" : "not yet" }));
  } else if (app.blobs.has(box.dataset.key) || !thumbObserver) {
    loadThumb(box);
  } else {
    box.append(el("span", { className: "none", text: "loading…" }));
    thumbObserver.observe(box);
  }
  return el("figure", {}, box, el("figcaption", { text: caption }));
}

function fileItem(job, file) {
  const facts = [
    "state: " + file.state,
    "tries: " + (file.attempts || 0),
    "size: " + Math.round(file.size / 1024) + " KiB",
  ];
  if (file.seconds !== null && file.seconds !== undefined) facts.push("took " + file.seconds.toFixed(1) + " s");
  const item = el(
    "li",
    { className: "file", "data-file": file.id },
    el("h3", { text: file.name }),
    el("p", { className: "facts", text: facts.join(" · ") }),
    file.error ? el("p", { className: "error", text: file.error }) : null,
    el("div", { className: "pair" }, thumb(job, file, "before"), thumb(job, file, "after")),
  );
  if (file.output) {
    const button = el("button", { type: "button", className: "secondary", text: "Download" });
    button.setAttribute("aria-label", "Download the cutout of " + file.name);
    const name = file.name.replace(/\.[^.]*$/, "") + ".png";
    button.addEventListener("click", () => download(file.output, name, button));
    item.append(el("div", { className: "actions" }, button));
  }
  return item;
}

async function command(job, action, button) {
  button.disabled = true;
  try {
    await api("/queue/job/" + job.job_id + "/" + action, { method: "POST" });
    say(action === "cancel" ? "Cancelled: files not yet started will not run." : "Retrying the failed files.", "info");
    app.lastRender = "";
    if (app.timer === null) poll(app.refresh);
  } catch (error) {
    fail(error);
  } finally {
    button.disabled = false;
  }
}

function renderJob(job) {
  const percent = job.progress.percent;
  const head = el(
    "dl",
    { className: "cards" },
    card("Status", job.status, "state-" + job.status),
    card("Watch", job.watch),
    card("Files", job.progress.processed + " of " + job.progress.total + " done (" + job.progress.failed + " failed)"),
    card("Created", age(job.created_at)),
    card("ETA", job.finished_at ? "done" : duration(job.eta_seconds)),
  );
  const bar = el("div", { className: "job-progress" }, progressBar(percent, "progress of the job"), el("span", { className: "percent", text: percent + " %" }));
  const actions = el("div", { className: "actions" });
  const done = (job.files || []).some((f) => f.state === "done");
  if (done) {
    const zip = el("button", { type: "button", text: "Download all (zip)" });
    zip.addEventListener("click", () => download("/queue/job/" + job.job_id + "/results.zip", "job-" + job.job_id + ".zip", zip));
    actions.append(zip);
  }
  if (may("submit") && !job.finished_at) {
    const cancel = el("button", { type: "button", className: "danger", text: "Cancel job" });
    cancel.addEventListener("click", () => command(job, "cancel", cancel));
    actions.append(cancel);
  }
  if (may("submit") && job.finished_at && job.progress.failed > 0) {
    const retry = el("button", { type: "button", text: "Retry failed files" });
    retry.addEventListener("click", () => command(job, "retry", retry));
    actions.append(retry);
  }
  const list = el("ul", { className: "files", "aria-label": "Files of the job" }, ...(job.files || []).map((f) => fileItem(job, f)));
  setView(job.name || "Job " + job.job_id, head, bar, actions, list);
}

function showJob(id) {
  poll(async () => {
    const job = await json("/queue/job/" + id);
    if (changed(job)) renderJob(job);
    return job.finished_at === null;
  });
}

// upload

function collectEntry(entry, prefix, out) {
  return new Promise((resolve) => {
    if (entry.isFile) {
      entry.file((file) => { out.push([file, prefix + file.name]); resolve(); }, () => resolve());
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      const all = [];
      const next = () => reader.readEntries(async (batch) => {
        if (!batch.length) {
          for (const child of all) await collectEntry(child, prefix + entry.name + "/", out);
          resolve();
        } else {
          all.push(...batch);
          next();
        }
      }, () => resolve());
      next();
    } else resolve();
  });
}

function showUpload() {
  const chosen = [];
  const list = el("ul", { className: "chosen", "aria-live": "polite" });
  const count = el("p", { text: "No files chosen." });
  const refreshList = () => {
    count.textContent = chosen.length ? chosen.length + " file(s) chosen." : "No files chosen.";
    list.replaceChildren(...chosen.slice(0, 200).map(([, name]) => el("li", { text: name })));
    send.disabled = chosen.length === 0;
  };
  const add = (pairs) => { chosen.push(...pairs); refreshList(); };

  const files = el("input", { id: "upload-files", type: "file", multiple: true, accept: "image/*,.zip" });
  files.addEventListener("change", () => add([...files.files].map((f) => [f, f.name])));
  const folder = el("input", { id: "upload-folder", type: "file", multiple: true, webkitdirectory: true });
  folder.addEventListener("change", () => add([...folder.files].map((f) => [f, f.webkitRelativePath || f.name])));

  const drop = el(
    "div",
    { className: "drop", id: "drop", role: "region", "aria-label": "Drop photos or a folder here" },
    el("p", { text: "Drop photos or a folder here" }),
    el("div", { className: "pickers" },
      el("label", { for: "upload-files" }, "or choose photos", files),
      el("label", { for: "upload-folder" }, "or choose a folder", folder)),
  );
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const items = [...(e.dataTransfer.items || [])].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    const out = [];
    if (items.length) for (const entry of items) await collectEntry(entry, "", out);
    else for (const f of e.dataTransfer.files) out.push([f, f.name]);
    add(out);
  });

  const options = el("fieldset", { className: "options" }, el("legend", { text: "Options (empty: the watch's own)" }));
  const send = el("button", { type: "submit", text: "Upload", disabled: true });
  const bar = progressBar(0, "upload progress");
  const barBox = el("div", { hidden: true }, el("p", { text: "Uploading…" }), bar);
  const form = el("form", { id: "upload-form", "aria-label": "Upload photos" }, drop, count, list, options, send, barBox);

  json("/queue/stats").then((stats) => {
    options.append(
      select("opt-watch", "Watch", Object.keys(stats.watches || {}), "", "the default watch"),
      select("opt-model", "Model", stats.models || [], "", "the watch's model"),
      select("opt-format", "Format", FORMATS, "", "the watch's format"),
      el("label", { for: "opt-background" }, "Background (empty: transparent)", el("input", { id: "opt-background", type: "text", pattern: "#[0-9a-fA-F]{6}", placeholder: "#ffffff" })),
      el("label", { for: "opt-name" }, "Job name (optional)", el("input", { id: "opt-name", type: "text", maxlength: "200" })),
    );
  }).catch(fail);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!chosen.length) return;
    const body = new FormData();
    for (const [file, name] of chosen) body.append("images", file, name.split("/").pop());
    const folderName = chosen[0][1].includes("/") ? chosen[0][1].split("/")[0] : "";
    const fields = { watch: "opt-watch", model: "opt-model", format: "opt-format", background: "opt-background", name: "opt-name" };
    for (const [field, id] of Object.entries(fields)) {
      const input = document.getElementById(id);
      const value = input ? input.value.trim() : "";
      if (value) body.append(field, value);
      else if (field === "name" && folderName && !folderName.startsWith(".")) body.append("name", folderName);
    }
    upload(body, bar, barBox, send);
  });
  setView("Upload", form);
}

function upload(body, bar, barBox, send) {
  const request = new XMLHttpRequest();
  request.open("POST", "/queue/submit");
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) request.setRequestHeader("Authorization", "Bearer " + token);
  const show = (percent) => {
    bar.value = percent;
    bar.setAttribute("aria-valuenow", String(percent));
    bar.setAttribute("aria-valuetext", percent + " %");
  };
  request.upload.addEventListener("progress", (e) => { if (e.lengthComputable) show(Math.round((100 * e.loaded) / e.total)); });
  request.addEventListener("load", () => {
    send.disabled = false;
    let answer = {};
    try { answer = JSON.parse(request.responseText); } catch (e) { answer = {}; }
    if (request.status === 202) {
      show(100);
      say("Uploaded: job " + answer.job_id + " with " + answer.files_count + " file(s).", "info");
      location.hash = "#/job/" + answer.job_id;
      return;
    }
    barBox.hidden = true;
    const detail = typeof answer.detail === "string" ? answer.detail : answer.detail ? JSON.stringify(answer.detail) : request.statusText;
    if (request.status === 401) askToken("This daemon needs a token to upload.");
    say(explain(request.status, detail, { get: (h) => request.getResponseHeader(h) }));
  });
  request.addEventListener("error", () => {
    send.disabled = false;
    barBox.hidden = true;
    say(explain(0, "the upload did not reach it"));
  });
  send.disabled = true;
  barBox.hidden = false;
  show(0);
  request.send(body);
}

// --- start -----------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  setupTokenForm();
  route();
});
