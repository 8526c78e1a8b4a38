// The FileBrowser: browse own and public files, download, delete, upload models with a progress bar.

import { api, el, formatBytes, formatTime, imageUrl, upload } from "./api.js";
import { clearErrors, showErrors } from "./errors.js";

// Model folders and the kind the models API calls them (a model is deleted through it when it exists).
const MODEL_DIRS = { "models/Stable-diffusion": "checkpoint", "models/Lora": "lora", "models/VAE": "vae",
  "models/ControlNet": "controlnet", embeddings: "embedding", "models/hypernetworks": "hypernetwork" };

function modelKind(path) {
  const folder = path.split("/").slice(0, -1).join("/");
  return MODEL_DIRS[folder] || null;
}

export class FilesTab {
  constructor(section, app) {
    this.section = section;
    this.app = app;
    this.root = "me";
    this.path = "";
    this.seq = 0;
    this.body = section.querySelector("tbody");
    this.crumbs = section.querySelector(".crumbs");
    this.form = section.querySelector("form.upload");
    for (const b of section.querySelectorAll("[data-root]")) {
      b.addEventListener("click", () => this.open(b.dataset.root, ""));
    }
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.upload(); });
  }

  configure(config) {
    const can = config.features.upload;
    this.form.querySelector(".unavailable").hidden = can;
    for (const c of this.form.querySelectorAll("input, select, button")) c.disabled = !can;
    this.form.querySelector(".admin-only").hidden = config.role !== "admin";
  }

  load() { return this.open(this.root, this.path); }

  async open(root, path) {
    clearErrors(this.section);
    const seq = ++this.seq;  // only the latest click's answer is shown, whatever order answers arrive in
    let data;
    try {
      data = await api(`/browse?${new URLSearchParams({ root, path })}`);
    } catch (e) {
      if (e.status !== 401 && seq === this.seq) showErrors(this.section, e.message);
      return;
    }
    if (seq !== this.seq) return;
    this.root = root;
    this.path = data.path;
    for (const b of this.section.querySelectorAll("[data-root]")) b.setAttribute("aria-pressed", String(b.dataset.root === root));
    this.renderCrumbs();
    this.renderRows(data);
  }

  renderCrumbs() {
    const parts = this.path ? this.path.split("/") : [];
    const items = [el("button", { type: "button", text: this.root === "me" ? "my files" : "public",
      onclick: () => this.open(this.root, "") })];
    parts.forEach((part, i) => {
      items.push(el("span", { text: "/" }));
      items.push(el("button", { type: "button", text: part, onclick: () => this.open(this.root, parts.slice(0, i + 1).join("/")) }));
    });
    this.crumbs.replaceChildren(...items);
  }

  renderRows(data) {
    const rows = [];
    if (this.path) {
      const up = this.path.split("/").slice(0, -1).join("/");
      rows.push(el("tr", {}, el("td", { class: "name" }, el("button", { type: "button", text: ".. (up)", onclick: () => this.open(this.root, up) })),
        el("td"), el("td", { class: "when" }), el("td")));
    }
    for (const name of data.folders) {
      const path = this.path ? `${this.path}/${name}` : name;
      rows.push(el("tr", { "data-folder": name },
        el("td", { class: "name" }, el("button", { type: "button", text: name, onclick: () => this.open(this.root, path) })),
        el("td", { class: "num" }), el("td", { class: "when" }), el("td")));
    }
    for (const file of data.files) rows.push(this.fileRow(file, data.writable));
    if (!data.folders.length && !data.files.length) rows.push(el("tr", {}, el("td", { class: "empty", colspan: "4", text: "empty folder" })));
    this.body.replaceChildren(...rows);
  }

  fileRow(file, writable) {
    const path = this.path ? `${this.path}/${file.name}` : file.name;
    const actions = el("td", { class: "actions-cell" },
      el("button", { type: "button", text: "Download", onclick: () => this.download(file) }));
    if (writable) actions.append(el("button", { type: "button", text: "Delete", onclick: () => this.remove(path, file.name) }));
    return el("tr", { "data-file": file.name },
      el("td", { class: "name", title: file.name, text: file.name }),
      el("td", { class: "num", text: formatBytes(file.size) }),
      el("td", { class: "when", text: formatTime(file.modified) }), actions);
  }

  async download(file) {
    try {
      const href = await imageUrl(file.url);  // any file: fetched with the token, saved under its own name
      el("a", { href, download: file.name }).click();
    } catch (e) {
      showErrors(this.section, e.message);
    }
  }

  async remove(path, name) {
    if (!confirm(`Delete ${name}?`)) return;
    const kind = modelKind(path);
    const url = kind && this.app.features.upload
      ? `/models/${kind}/${encodeURIComponent(name)}${this.root === "public" ? "?public=true" : ""}`
      : `/browse?${new URLSearchParams({ root: this.root, path })}`;
    try {
      await api(url, { method: "DELETE" });
    } catch (e) {
      if (e.status !== 401) showErrors(this.section, e.message);
      return;
    }
    if (kind) this.app.modelsChanged();
    await this.load();
  }

  async upload() {
    clearErrors(this.form);
    const ok = this.form.querySelector(".ok");
    ok.textContent = "";
    const kind = this.form.querySelector('[data-field="kind"]').value;
    const file = this.form.querySelector('[data-field="file"]').files[0];
    if (!file) { showErrors(this.form, "file: choose a .safetensors file"); return; }
    const pub = this.form.querySelector('[data-field="public"]').checked;
    const bar = this.form.querySelector(".upload-progress");
    const pct = bar.querySelector(".pct");
    bar.hidden = false;
    const show = (fraction) => {
      bar.querySelector("progress").value = Math.round(fraction * 100);
      pct.textContent = `${Math.round(fraction * 100)}%`;
    };
    show(0);
    // POST /models/{kind}?name=: the raw file is the body, streamed to the server as it is read.
    const query = new URLSearchParams({ name: file.name });
    if (pub) query.set("public", "true");
    const button = this.form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      await upload(`/models/${encodeURIComponent(kind)}?${query}`, file, show);
      show(1);
      ok.textContent = `Uploaded ${file.name} (${formatBytes(file.size)}) as a ${kind}.`;
      this.form.querySelector('[data-field="file"]').value = "";
      this.app.modelsChanged();
      await this.load();
    } catch (e) {
      if (e.status !== 401) showErrors(this.form, e.message);
    } finally {
      button.disabled = false;
    }
  }
}
