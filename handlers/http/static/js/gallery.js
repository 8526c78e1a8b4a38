// The gallery: the caller's own outputs, newest first, a page at a time from the listing (the server opens no
// image for it), more pages as the end of the grid scrolls into view (or "Load more"). Each PNG's infotext is
// read here from the bytes downloaded to show it; a click opens the lightbox.

import { api, el, fetchImage, formatTime } from "./api.js";
import { clearErrors, showErrors } from "./errors.js";
import { Lightbox } from "./lightbox.js";
import { pngParameters } from "./pngtext.js";

const PAGE = 24;
const NEAR_PX = 600;  // the next page loads when the end of the grid is this close below the screen

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
    this.loading = null;  // the page being fetched: scrolling asks for the next one only after it
    this.lightbox = new Lightbox(this, app);
    section.querySelector('[data-action="refresh"]').addEventListener("click", () => this.load());
    this.more.addEventListener("click", () => this.next());
    // The "Load more" button is the sentinel: when it comes into view (within a screen), the next page loads.
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && !section.hidden) this.next();
    }, { rootMargin: `0px 0px ${NEAR_PX}px 0px` }).observe(this.more);
  }

  async load() {
    this.cursor = null;
    this.items = [];
    this.grid.replaceChildren();
    this.loading = null;
    await this.page();
  }

  // The next page, unless one is loading or there is none.
  next() {
    if (this.loading || !this.cursor) return this.loading;
    return this.page();
  }

  page() {
    const seq = ++this.seq;  // a refresh while a page is loading drops the older answer
    this.loading = this.fetchPage(seq).finally(() => { if (seq === this.seq) this.loading = null; });
    return this.loading;
  }

  async fetchPage(seq) {
    clearErrors(this.section);
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
    const items = await Promise.all(data.items.map((item) => this.withImage(item)));
    if (seq !== this.seq) return;
    this.cursor = data.next_cursor;
    this.more.hidden = !this.cursor;
    const start = this.items.length;
    this.items.push(...items);
    this.grid.append(...items.map((item, k) => this.card(item, start + k)));
    this.empty.hidden = this.items.length > 0;
    requestAnimationFrame(() => this.fillScreen());
  }

  // The observer reports only changes: when the end of the grid is still in view after a page (a tall
  // screen), the next page is asked for here.
  fillScreen() {
    if (this.section.hidden || this.more.hidden) return;
    if (this.more.getBoundingClientRect().top < innerHeight + NEAR_PX) this.next();
  }

  // The item with its image's src and infotext (null: unknown here, the lightbox asks the server).
  async withImage(item) {
    let src = "", infotext = null;
    try {
      const image = await fetchImage(item.url);
      src = image.src;
      if (image.blob) infotext = await pngParameters(image.blob);
    } catch { /* the card still shows its name */ }
    return { ...item, src, infotext };
  }

  // An item's infotext, read by the server when the page could not (a JPEG / WebP, a signed URL).
  async infotextOf(item) {
    if (item.infotext === null) {
      try {
        item.infotext = (await api(`/outputs/infotext?${new URLSearchParams({ key: item.key })}`)).infotext;
      } catch {
        return "";
      }
    }
    return item.infotext;
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
