// The gallery: the caller's own outputs, newest first, a page at a time (the server reads only that page's
// PNGs), with infotext and download; a click opens the lightbox.

import { api, el, formatTime, imageUrl } from "./api.js";
import { clearErrors, showErrors } from "./errors.js";
import { Lightbox } from "./lightbox.js";

const PAGE = 24;

export class GalleryTab {
  constructor(section, app) {
    this.section = section;
    this.app = app;
    this.grid = section.querySelector(".gallery-grid");
    this.more = section.querySelector('[data-action="more"]');
    this.empty = section.querySelector(".empty");
    this.cursor = null;
    this.items = [];
    this.seq = 0;
    this.lightbox = new Lightbox(this, app);
    section.querySelector('[data-action="refresh"]').addEventListener("click", () => this.load());
    this.more.addEventListener("click", () => this.page());
  }

  async load() {
    this.cursor = null;
    this.items = [];
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
    const items = await Promise.all(data.items.map(async (item) => {
      let src = "";
      try { src = await imageUrl(item.url); } catch { /* the card still shows name and infotext */ }
      return { ...item, src };
    }));
    if (seq !== this.seq) return;
    this.cursor = data.next_cursor;
    this.more.hidden = !this.cursor;
    const start = this.items.length;
    this.items.push(...items);
    this.grid.append(...items.map((item, k) => this.card(item, start + k)));
    this.empty.hidden = this.items.length > 0;
  }

  removeItem(i) {
    this.items.splice(i, 1);
    this.grid.replaceChildren(...this.items.map((item, k) => this.card(item, k)));
    this.empty.hidden = this.items.length > 0;
  }

  card(item, i) {
    const buttons = el("div", { class: "buttons" },
      el("a", { class: "button", href: item.src, download: item.name, text: "Download" }),
      el("button", { type: "button", text: "Open", onclick: () => this.lightbox.open(i) }));
    const caption = el("figcaption", {},
      el("div", { class: "meta", text: `${item.folder.replace(/\/\d{4}-\d{2}-\d{2}$/, "")} · ${formatTime(item.modified)}` }),
      item.infotext ? el("pre", { class: "infotext", text: item.infotext }) : null,
      buttons);
    return el("figure", { class: "out", "data-key": item.key },
      el("img", { src: item.src, alt: item.infotext ? item.infotext.split("\n")[0] : item.name, loading: "lazy",
        onclick: () => this.lightbox.open(i) }), caption);
  }
}
