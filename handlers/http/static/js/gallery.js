// The gallery: the caller's own outputs, newest first, a page at a time, with infotext and download.

import { api, el, formatTime, imageUrl } from "./api.js";
import { clearErrors, showErrors } from "./errors.js";

const PAGE = 12;

export class GalleryTab {
  constructor(section, app) {
    this.section = section;
    this.app = app;
    this.grid = section.querySelector(".gallery-grid");
    this.more = section.querySelector('[data-action="more"]');
    this.empty = section.querySelector(".empty");
    this.cursor = null;
    this.seq = 0;
    section.querySelector('[data-action="refresh"]').addEventListener("click", () => this.load());
    this.more.addEventListener("click", () => this.page());
  }

  async load() {
    this.cursor = null;
    this.grid.replaceChildren();
    await this.page();
  }

  async page() {
    clearErrors(this.section);
    const seq = ++this.seq;  // a refresh while a page is loading drops the older answer
    const query = new URLSearchParams({ limit: PAGE });
    if (this.cursor) query.set("cursor", this.cursor);
    let data;
    try {
      data = await api(`/outputs?${query}`);
    } catch (e) {
      if (e.status !== 401 && seq === this.seq) showErrors(this.section, e.message);
      return;
    }
    if (seq !== this.seq) return;
    this.cursor = data.next_cursor;
    this.more.hidden = !this.cursor;
    this.empty.hidden = data.items.length > 0 || this.grid.children.length > 0;
    const cards = await Promise.all(data.items.map((item) => this.card(item)));
    if (seq === this.seq) this.grid.append(...cards);
  }

  async card(item) {
    let src = "";
    try { src = await imageUrl(item.url); } catch { /* the card still shows name and infotext */ }
    const buttons = el("div", { class: "buttons" },
      el("a", { class: "button", href: src, download: item.name, text: "Download" }));
    if (this.app.features.img2img && src) {
      buttons.append(el("button", { type: "button", text: "Send to img2img",
        onclick: () => this.app.sendToImg2img(src, {}) }));
    }
    const caption = el("figcaption", {},
      el("div", { class: "meta", text: `${item.folder.replace(/\/\d{4}-\d{2}-\d{2}$/, "")} · ${formatTime(item.modified)}` }),
      item.infotext ? el("pre", { class: "infotext", text: item.infotext }) : null,
      buttons);
    return el("figure", { class: "out", "data-key": item.key },
      el("img", { src, alt: item.infotext ? item.infotext.split("\n")[0] : item.name, loading: "lazy" }), caption);
  }
}
