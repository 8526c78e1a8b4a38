// easel web page: sign in, tabs, and the glue between them. Plain ES modules, no build step.

import { api, auth, el, whenUnauthorized } from "./js/api.js";
import { clearErrors, showErrors } from "./js/errors.js";
import { ExtrasTab } from "./js/extras.js";
import { FilesTab } from "./js/files.js";
import { GalleryTab } from "./js/gallery.js";
import { GenTab } from "./js/generate.js";
import { PngInfoTab } from "./js/pnginfo.js";
import { PromptTab } from "./js/prompt.js";
import { QueueTab } from "./js/queue.js";
import { missingModels } from "./js/readiness.js";

const $ = (sel) => document.querySelector(sel);
const REQUESTS_KEY = "easel.requests";  // task id → the body this browser queued (for re-run), newest 50
const ALWAYS_RELOAD = new Set(["gallery", "files", "queue"]);

class App {
  constructor() {
    this.features = {};
    this.config = null;
    this.missing = new Set();
    this.tabs = {
      txt2img: new GenTab($("#tab-txt2img"), "txt2img", this),
      img2img: new GenTab($("#tab-img2img"), "img2img", this),
      queue: new QueueTab($("#tab-queue"), this),
      gallery: new GalleryTab($("#tab-gallery"), this),
      extras: new ExtrasTab($("#tab-extras"), this),
      pnginfo: new PngInfoTab($("#tab-pnginfo"), this),
      files: new FilesTab($("#tab-files"), this),
      prompt: new PromptTab($("#tab-prompt"), this),
    };
    this.active = null;
    this.stale = new Set();  // tabs whose lists must be reloaded when next shown
    for (const b of document.querySelectorAll("#tabs [data-tab]")) b.addEventListener("click", () => this.show(b.dataset.tab));
    $("#signin-form").addEventListener("submit", (e) => { e.preventDefault(); this.signIn($("#token").value.trim()); });
    $("#sign-out").addEventListener("click", () => this.signOut());
    whenUnauthorized(() => this.signOut("the server did not accept the token, sign in again"));
    window.addEventListener("hashchange", () => this.show(location.hash.slice(1)));
  }

  async start() {
    if (!auth.token) return this.signOut();
    try {
      await this.enter();
    } catch (e) {
      if (e.status !== 401) this.signOut(e.message);
    }
  }

  async signIn(token) {
    const form = $("#signin-form");
    clearErrors(form);
    if (!token) return showErrors(form, "token: paste your token");
    auth.set(token);
    try {
      await this.enter();
    } catch (e) {
      if (e.status !== 401) showErrors(form, `token: ${e.message}`);  // a 401 was already shown by signOut
    }
  }

  signOut(message) {
    auth.clear();
    this.config = null;
    $("#tabs").hidden = true;
    $("#who").hidden = true;
    $("#admin-hints").hidden = true;
    for (const name of Object.keys(this.tabs)) $(`#tab-${name}`).hidden = true;
    $("#signin").hidden = false;
    const form = $("#signin-form");
    clearErrors(form);
    if (message) showErrors(form, `token: ${message}`);
    $("#token").value = "";
    $("#token").focus();
  }

  async enter() {
    const config = await api("/webui/config");
    this.features = config.features;
    const missing = await missingModels(config.features);
    this.config = config;
    this.missing = new Set(missing.map((m) => m.tab).filter(Boolean));
    $("#signin").hidden = true;
    $("#who-name").replaceChildren(config.user,
      ...(config.role === "admin" ? [el("span", { class: "role", text: "admin" })] : []));
    $("#who").hidden = false;
    this.showHints(missing, config.role === "admin");
    for (const b of document.querySelectorAll("#tabs [data-tab]")) b.hidden = !this.visible(b.dataset.tab);
    $("#tabs").hidden = false;
    this.tabs.files.configure(config);
    this.stale = new Set(Object.keys(this.tabs));
    const wanted = location.hash.slice(1);
    this.show(this.visible(wanted) ? wanted : "txt2img");
  }

  // What is hidden for want of models, told to admins (who can add them) with where they go.
  showHints(missing, admin) {
    const box = $("#admin-hints");
    box.replaceChildren(...missing.map((m) => el("p", {}, el("strong", { text: `${m.what}: ` }), m.hint)));
    box.hidden = !admin || missing.length === 0;
    this.features = { ...this.features, controlnet: this.features.controlnet && !missing.some((m) => m.feature === "controlnet") };
  }

  visible(name) {
    if (!this.config || !(name in this.tabs) || this.config.hidden_tabs.includes(name) || this.missing.has(name)) return false;
    if (name === "img2img") return this.features.img2img;
    if (name === "prompt") return this.features.beautifulprompt;
    if (name === "queue") return this.features.tasks;
    if (name === "pnginfo") return this.features.pnginfo;
    if (name === "extras") return this.features.extras;
    return true;
  }

  show(name) {
    if (!this.config || !this.visible(name)) return;
    for (const tab of Object.keys(this.tabs)) $(`#tab-${tab}`).hidden = tab !== name;
    for (const b of document.querySelectorAll("#tabs [data-tab]")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
    this.active = name;
    if (location.hash.slice(1) !== name) history.replaceState(null, "", `#${name}`);
    // The lists of outputs, files and tasks always reload; the forms' option lists only when something changed.
    if (ALWAYS_RELOAD.has(name) || this.stale.has(name)) {
      this.stale.delete(name);
      this.tabs[name].load(this.features);
    }
  }

  modelsChanged() {
    this.stale.add("txt2img");
    this.stale.add("img2img");
  }

  optionsChanged(fromLists) {  // the checkpoint / VAE the other form shows is now out of date
    for (const mode of ["txt2img", "img2img"]) if (this.tabs[mode].lists !== fromLists) this.stale.add(mode);
  }

  tasksChanged() { this.stale.add("queue"); }

  rememberRequest(taskId, mode, body) {
    const saved = this.requests().filter(([id]) => id !== taskId);
    saved.unshift([taskId, { mode, body }]);
    try { localStorage.setItem(REQUESTS_KEY, JSON.stringify(saved.slice(0, 50))); } catch { /* full: re-run uses the echo */ }
  }

  rememberedRequest(taskId) {
    const hit = this.requests().find(([id]) => id === taskId);
    return hit ? hit[1].body : null;
  }

  requests() {
    try { return JSON.parse(localStorage.getItem(REQUESTS_KEY) || "[]"); } catch { return []; }
  }

  // The buttons under a generated image, wherever it is shown.
  sendButtons(src, infotext, values) {
    return this.features.img2img ? el("button", { type: "button", text: "Send to img2img",
      onclick: () => this.sendToImg2img(src, values || {}) }) : null;
  }

  async sendToImg2img(src, values) {
    const tab = this.tabs.img2img;
    tab.applyParams(values);
    this.show("img2img");
    await tab.setInitImage(src);
  }

  sendToTxt2img(values) {
    this.tabs.txt2img.applyParams(values);
    this.show("txt2img");
  }

  sendToExtras(src) {
    this.tabs.extras.setImage(src);
    this.show("extras");
  }

  toTxt2img(prompt) { this.sendToTxt2img({ prompt }); }
}

const app = new App();
window.easelApp = app;  // for debugging from the console
app.start();
