// PNG Info: drop, paste or choose an image; POST /sdapi/v1/png-info reads its generation parameters,
// which can then be sent to txt2img or img2img.

import { api, el } from "./api.js";
import { dropInto, pasteInto } from "./drop.js";
import { clearErrors, showErrors } from "./errors.js";
import { fieldsFromInfotext } from "./fields.js";
import { fileToDataUrl, stripDataUrl } from "./mask.js";

export class PngInfoTab {
  constructor(section, app) {
    this.section = section;
    this.app = app;
    this.input = section.querySelector('[data-field="png_file"]');
    this.preview = section.querySelector(".png-preview");
    this.out = section.querySelector(".png-info");
    this.parameters = null;
    this.src = null;
    dropInto(section.querySelector(".drop-zone"), this.input);
    pasteInto(this.input, () => app.active === "pnginfo");
    this.input.addEventListener("change", () => this.read());
    section.querySelector('[data-action="to-txt2img"]').addEventListener("click", () => this.send("txt2img"));
    section.querySelector('[data-action="to-img2img"]').addEventListener("click", () => this.send("img2img"));
  }

  load() {}

  async read() {
    clearErrors(this.section);
    const file = this.input.files[0];
    if (!file) return;
    this.src = await fileToDataUrl(file);
    this.preview.replaceChildren(el("img", { src: this.src, alt: file.name }));
    try {
      const res = await api("/sdapi/v1/png-info", { method: "POST", json: { image: stripDataUrl(this.src) } });
      this.parameters = res.parameters || {};
      this.show(res);
    } catch (e) {
      this.parameters = null;
      if (e.status !== 401) showErrors(this.section, e.message);
    }
  }

  show(res) {
    const rows = Object.entries(res.items || {}).filter(([k]) => k !== "parameters")
      .map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) })));
    this.out.replaceChildren(
      el("pre", { class: "infotext", text: res.info || "this image carries no generation parameters" }),
      rows.length ? el("table", { class: "png-items" }, rows) : null);
    for (const b of this.section.querySelectorAll(".send button")) b.disabled = !res.info;
  }

  send(mode) {
    if (!this.parameters) return;
    const values = fieldsFromInfotext(this.parameters);
    if (mode === "img2img") this.app.sendToImg2img(this.src, values);
    else this.app.sendToTxt2img(values);
  }
}
