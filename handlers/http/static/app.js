// easel web page: sign in, tabs, and the glue between them. Plain ES modules, no build step.

import { api, auth, whenUnauthorized } from "./js/api.js";
import { clearErrors, showErrors } from "./js/errors.js";
import { FilesTab } from "./js/files.js";
import { GalleryTab } from "./js/gallery.js";
import { GenTab } from "./js/generate.js";
import { PromptTab } from "./js/prompt.js";

const $ = (sel) => document.querySelector(sel);

class App {
  constructor() {
    this.features = {};
    this.config = null;
    this.tabs = {
      txt2img: new GenTab($("#tab-txt2img"), "txt2img", this),
      img2img: new GenTab($("#tab-img2img"), "img2img", this),
      gallery: new GalleryTab($("#tab-gallery"), this),
      files: new FilesTab($("#tab-files"), this),
      prompt: new PromptTab($("#tab-prompt"), this),
    };
    this.active = null;
    this.stale = new Set();  // tabs whose lists must be reloaded when next shown
    for (const b of document.querySelectorAll("#tabs [data-tab]")) b.addEventListener("click", () => this.show(b.dataset.tab));
    $("#signin-form").addEventListener("submit", (e) => { e.preventDefault(); this.signIn($("#token").value.trim()); });
    $("#sign-out").addEventListener("click", () => this.signOut());
    whenUnauthorized(() => this.signOut("The server did not accept the token; sign in again."));
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
      if (e.status !== 401) showErrors(form, `token: ${e.message}`);
    }
  }

  signOut(message) {
    auth.clear();
    this.config = null;
    $("#tabs").hidden = true;
    $("#who").hidden = true;
    for (const name of Object.keys(this.tabs)) $(`#tab-${name}`).hidden = true;
    $("#signin").hidden = false;
    const form = $("#signin-form");
    clearErrors(form);
    if (message) showErrors(form, `token: ${message}`);
    $("#token").value = "";
    $("#token").focus();
  }

  async enter() {
    this.config = await api("/webui/config");
    this.features = this.config.features;
    $("#signin").hidden = true;
    $("#who-name").replaceChildren(this.config.user,
      ...(this.config.role === "admin" ? [Object.assign(document.createElement("span"), { className: "role", textContent: "admin" })] : []));
    $("#who").hidden = false;
    for (const b of document.querySelectorAll("#tabs [data-tab]")) b.hidden = !this.visible(b.dataset.tab);
    $("#tabs").hidden = false;
    this.tabs.files.configure(this.config);
    this.stale = new Set(Object.keys(this.tabs));
    const wanted = location.hash.slice(1);
    this.show(this.visible(wanted) ? wanted : "txt2img");
  }

  visible(name) {
    if (!(name in this.tabs) || this.config.hidden_tabs.includes(name)) return false;
    if (name === "img2img") return this.features.img2img;
    if (name === "prompt") return this.features.beautifulprompt;
    return true;
  }

  show(name) {
    if (!this.config || !this.visible(name)) return;
    for (const [tab, obj] of Object.entries(this.tabs)) $(`#tab-${tab}`).hidden = tab !== name;
    for (const b of document.querySelectorAll("#tabs [data-tab]")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
    this.active = name;
    if (location.hash.slice(1) !== name) history.replaceState(null, "", `#${name}`);
    // The gallery and file lists always reload; the forms' option lists only when something changed.
    if (name === "gallery" || name === "files" || this.stale.has(name)) {
      this.stale.delete(name);
      const tab = this.tabs[name];
      tab.load(this.features);
    }
  }

  modelsChanged() {
    this.stale.add("txt2img");
    this.stale.add("img2img");
  }

  async sendToImg2img(src, params) {
    const tab = this.tabs.img2img;
    tab.applyParams(params);
    this.show("img2img");
    await tab.setInitImage(src);
  }

  toTxt2img(prompt) {
    this.tabs.txt2img.f("prompt").value = prompt;
    this.show("txt2img");
  }
}

const app = new App();
window.easelApp = app;  // for debugging from the console
app.start();
