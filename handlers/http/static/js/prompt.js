// BeautifulPrompt: a short prompt in, a detailed one out, then on to txt2img.

import { api, el } from "./api.js";
import { clearErrors, showErrors } from "./errors.js";

export class PromptTab {
  constructor(section, app) {
    this.section = section;
    this.app = app;
    this.form = section.querySelector("form");
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.expand(); });
    this.form.querySelector('[data-action="to-txt2img"]').addEventListener("click", () => {
      const text = this.f("result").value.trim();
      if (text) this.app.toTxt2img(text);
    });
  }

  f(name) { return this.form.querySelector(`[data-field="${name}"]`); }

  async load() {
    try {
      const { models } = await api("/beautifulprompt/models");
      const select = this.f("model");
      const keep = select.value;
      select.replaceChildren(...models.map((m) => el("option", { value: m, text: m })));
      if (models.includes(keep)) select.value = keep;
      this.form.querySelector(".no-models").hidden = models.length > 0;
    } catch (e) {
      if (e.status !== 401) showErrors(this.form, e.message);
    }
  }

  async expand() {
    clearErrors(this.form);
    const busy = this.form.querySelector(".busy");
    const button = this.form.querySelector('button[type="submit"]');
    busy.hidden = false;
    button.disabled = true;
    try {
      const max = this.f("max_new_tokens").value.trim();
      const res = await api("/beautifulprompt", { method: "POST", json: {
        prompt: this.f("prompt").value, model: this.f("model").value, max_new_tokens: max === "" ? null : Number(max),
      } });
      this.f("result").value = res.prompt;
    } catch (e) {
      if (e.status !== 401) showErrors(this.form, e.message);
    } finally {
      busy.hidden = true;
      button.disabled = false;
    }
  }
}
