// The gallery's enlarged view: one image with its infotext; ←/→ move, Esc closes, Delete removes it.
// Copy parameters puts the infotext on the clipboard; send to txt2img / img2img carry its parameters.

import { api, el } from "./api.js";
import { fieldsFromInfotext, parseInfotext } from "./fields.js";

export class Lightbox {
  constructor(gallery, app) {
    this.gallery = gallery;
    this.app = app;
    this.index = -1;
    this.node = el("div", { class: "lightbox", role: "dialog", "aria-modal": "true", "aria-label": "image", hidden: true });
    document.body.append(this.node);
    this.node.addEventListener("click", (e) => { if (e.target === this.node) this.close(); });
    document.addEventListener("keydown", (e) => {
      if (this.node.hidden) return;
      if (e.key === "Escape") this.close();
      else if (e.key === "ArrowRight") this.open(this.index + 1);
      else if (e.key === "ArrowLeft") this.open(this.index - 1);
      else if (e.key === "Delete") this.remove();
    });
  }

  get items() { return this.gallery.items; }

  open(i) {
    if (i < 0 || i >= this.items.length) return;
    this.index = i;
    const item = this.items[i];
    const status = el("p", { class: "ok", role: "status" });
    const text = el("pre", { class: "infotext", text: item.infotext === null ? "reading parameters…" : item.infotext || "no parameters stored" });
    this.node.replaceChildren(el("div", { class: "lightbox-body" },
      el("img", { src: item.src, alt: (item.infotext || "").split("\n")[0] || item.name }),
      el("div", { class: "lightbox-side" },
        el("div", { class: "meta", text: `${i + 1} / ${this.items.length}${this.gallery.cursor ? "+" : ""} · ${item.name}` }),
        text,
        el("div", { class: "buttons" },
          el("button", { type: "button", text: "◀", "aria-label": "previous", disabled: i === 0, onclick: () => this.open(i - 1) }),
          el("button", { type: "button", text: "▶", "aria-label": "next", disabled: i === this.items.length - 1,
            onclick: () => this.open(i + 1) }),
          el("button", { type: "button", text: "Copy parameters", onclick: () => this.copy(item, status) }),
          el("button", { type: "button", text: "Send to txt2img", onclick: () => this.send(item, "txt2img") }),
          this.app.features.img2img ? el("button", { type: "button", text: "Send to img2img", onclick: () => this.send(item, "img2img") }) : null,
          this.app.features.extras ? el("button", { type: "button", text: "Send to extras", onclick: () => this.send(item, "extras") }) : null,
          el("button", { type: "button", class: "danger", text: "Delete", onclick: () => this.remove() }),
          el("button", { type: "button", text: "Close", onclick: () => this.close() })),
        status, el("p", { class: "err", role: "alert" }))));
    this.node.hidden = false;
    if (item.infotext === null) {  // not a PNG this page could read: the server reads this one image
      this.gallery.infotextOf(item).then((t) => { if (this.index === i) text.textContent = t || "no parameters stored"; });
    }
  }

  close() { this.node.hidden = true; }

  async copy(item, status) {
    try {
      await navigator.clipboard.writeText(await this.gallery.infotextOf(item));
      status.textContent = "Parameters copied.";
    } catch {
      status.textContent = "The browser refused the clipboard: select the text above and copy it.";
    }
  }

  async send(item, mode) {
    const infotext = await this.gallery.infotextOf(item);
    const values = infotext ? fieldsFromInfotext(parseInfotext(infotext)) : {};
    this.close();
    if (mode === "extras") this.app.sendToExtras(item.src);
    else if (mode === "img2img") await this.app.sendToImg2img(item.src, values);
    else this.app.sendToTxt2img(values);
  }

  async remove() {
    const item = this.items[this.index];
    if (!item || !confirm(`Delete ${item.name}?`)) return;
    try {
      await api(`/browse?${new URLSearchParams({ root: "me", path: `outputs/${item.folder}/${item.name}` })}`, { method: "DELETE" });
    } catch (e) {
      if (e.status !== 401) this.node.querySelector(".err").textContent = e.message;
      return;
    }
    this.gallery.removeItem(this.index);
    if (this.items.length) this.open(Math.min(this.index, this.items.length - 1));
    else this.close();
  }
}
