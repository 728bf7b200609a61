// The console's own behaviour, beside htmx: messages, dropped files, selections.
// No inline scripts anywhere (the pages' CSP forbids them), so it all lives here.
"use strict";

function flash(message, kind) {
  const bar = document.getElementById("flash");
  if (!bar) return;
  bar.textContent = message;  // text, never markup: messages may quote user input
  bar.dataset.kind = kind || "error";
  bar.hidden = false;
}

document.addEventListener("click", (event) => {
  if (event.target.closest("#flash")) document.getElementById("flash").hidden = true;
});

// Errors come back as plain text (ours) or the API's JSON ({"error": {"message"}}).
document.addEventListener("htmx:responseError", (event) => {
  const xhr = event.detail.xhr;
  let message = xhr.responseText || xhr.statusText || `error ${xhr.status}`;
  if ((xhr.getResponseHeader("content-type") || "").includes("json")) {
    try { message = JSON.parse(xhr.responseText).error.message; } catch (_) { /* keep the text */ }
  }
  flash(message);
});
document.addEventListener("htmx:sendError", () => flash("The server did not answer. Is it running?"));
document.addEventListener("htmx:beforeRequest", () => { const bar = document.getElementById("flash"); if (bar) bar.hidden = true; });

// A file dropped on a drop zone goes into its file input, as if chosen there.
document.addEventListener("dragover", (event) => {
  const zone = event.target.closest && event.target.closest("[data-drop-target]");
  if (!zone) return;
  event.preventDefault();
  zone.classList.add("over");
});
document.addEventListener("dragleave", (event) => {
  const zone = event.target.closest && event.target.closest("[data-drop-target]");
  if (zone) zone.classList.remove("over");
});
document.addEventListener("drop", (event) => {
  const zone = event.target.closest && event.target.closest("[data-drop-target]");
  if (!zone) return;
  event.preventDefault();
  zone.classList.remove("over");
  const input = zone.querySelector("input[type=file]");
  if (!input || !event.dataTransfer.files.length) return;
  input.files = event.dataTransfer.files;
  input.dispatchEvent(new Event("change", { bubbles: true }));
});

// Show what a file input holds (a drop leaves no other trace).
function showFiles(input) {
  const label = input.closest("[data-drop-target]");
  const shown = label && label.querySelector("[data-files]");
  if (shown) {
    const n = input.files.length;
    shown.textContent = n === 0 ? "" : n === 1 ? input.files[0].name : `${n} files`;
  }
}
document.addEventListener("change", (event) => {
  const input = event.target;
  if (input instanceof HTMLInputElement && input.type === "file") showFiles(input);
});
// This script is deferred: the page shows its forms before it runs, so a file chosen in
// that moment (a slow connection, a busy machine) fired its change event unheard.
for (const input of document.querySelectorAll("[data-drop-target] input[type=file]")) {
  if (input.files.length) showFiles(input);
}

// "(3 selected)" beside a selection's actions.
function countSelected(root) {
  for (const counter of (root || document).querySelectorAll("[data-count-of]")) {
    const form = counter.closest("form");
    const n = form ? form.querySelectorAll(`input[name="${counter.dataset.countOf}"]:checked`).length : 0;
    counter.textContent = `(${n} selected)`;
  }
}
document.addEventListener("change", (event) => {
  if (event.target.matches && event.target.matches("input[type=checkbox]")) countSelected();
});
document.addEventListener("htmx:afterSettle", () => countSelected());

// A wrong face dropped from a cluster before naming it: it leaves the cluster's form
// (so naming skips it) and joins the unclustered faces.
document.addEventListener("click", (event) => {
  const button = event.target.closest && event.target.closest("[data-drop-face]");
  if (!button) return;
  event.preventDefault();
  const chip = button.closest(".chip");
  const cluster = button.closest("[data-cluster]");
  const dropped = cluster && cluster.querySelector("[data-dropped]");
  if (dropped) {
    const hidden = document.createElement("input");
    hidden.type = "hidden";
    hidden.name = "dropped";
    hidden.value = chip.dataset.face;
    dropped.appendChild(hidden);
  }
  const size = cluster && cluster.querySelector("[data-size]");
  if (size) size.textContent = String(Math.max(0, Number(size.textContent) - 1));
  button.remove();
  const unclustered = document.getElementById("unclustered-faces");
  if (unclustered) unclustered.prepend(chip); else chip.remove();
  const left = document.querySelector("[data-unclustered-count]");
  if (left) left.textContent = String(Number(left.textContent) + 1);
});
