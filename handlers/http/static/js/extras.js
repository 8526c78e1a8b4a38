// Extras: upscale an image (and restore faces where the server has a face restorer), one image at a time
// with POST /sdapi/v1/extra-single-image; the upscalers and face restorers are the caller's own lists.

import { api, el } from "./api.js";
import { dropInto, pasteInto } from "./drop.js";
import { clearErrors, showErrors } from "./errors.js";
import { readFields } from "./fields.js";
import { fillSelect } from "./lists.js";
import { fileToDataUrl, stripDataUrl } from "./mask.js";

export class ExtrasTab {
  constructor(section, app) {
    this.section = section;
    this.app = app;
    this.form = section.querySelector("form");
    this.input = section.querySelector('[data-field="extras_file"]');
    this.src = null;
    dropInto(section.querySelector(".drop-zone"), this.input);
    pasteInto(this.input, () => app.active === "extras");
    this.input.addEventListener("change", async () => {
      const file = this.input.files[0];
      if (file) this.setImage(await fileToDataUrl(file));
    });
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.run(); });
  }

  setImage(src) {
    this.src = src;
    this.section.querySelector(".extras-input").replaceChildren(el("img", { src, alt: "input image" }));
  }

  async load() {
    try {
      const [upscalers, faces] = await Promise.all([api("/sdapi/v1/upscalers"), api("/sdapi/v1/face-restorers")]);
      const names = upscalers.map((u) => [u.name]);
      for (const f of ["upscaler_1", "upscaler_2"]) fillSelect(this.form.querySelector(`[data-field="${f}"]`), names, "None");
      const have = new Set(faces.map((f) => f.name));
      this.form.querySelector('[data-feature="gfpgan"]').hidden = !have.has("GFPGAN");
      this.form.querySelector('[data-feature="codeformer"]').hidden = !have.has("CodeFormer");
    } catch (e) {
      if (e.status !== 401) showErrors(this.form, e.message);
    }
  }

  async run() {
    clearErrors(this.form);
    if (!this.src) return showErrors(this.form, "image: drop, paste or choose an image first");
    const { body } = readFields(this.form, { inpaint: false });
    const button = this.form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      const res = await api("/sdapi/v1/extra-single-image", { method: "POST", json: { ...body, image: stripDataUrl(this.src) } });
      const src = `data:image/png;base64,${res.image}`;
      this.section.querySelector(".extras-result").replaceChildren(el("figure", { class: "out image" },
        el("img", { src, alt: "extras result" }),
        el("figcaption", {}, el("pre", { class: "infotext", text: res.html_info.replace(/<[^>]+>/g, " ").trim() }),
          el("div", { class: "buttons" }, el("a", { class: "button", href: src, download: "extras.png", text: "Download" }),
            this.app.sendButtons(src, "", {})))));
    } catch (e) {
      if (e.status !== 401) showErrors(this.form, e.message);
    } finally {
      button.disabled = false;
    }
  }
}
