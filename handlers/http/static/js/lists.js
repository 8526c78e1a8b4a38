// The generation form's option lists from the API (samplers, schedules, checkpoints, VAEs, LoRAs, styles,
// upscalers), and the checkpoint / VAE pickers, which set the user's own options (POST /sdapi/v1/options).

import { api, el } from "./api.js";
import { showErrors } from "./errors.js";

const IMAGE_UPSCALERS = ["None", "Lanczos", "Nearest"];  // what hr_upscaler takes besides the latent modes

export function fillSelect(select, items, preferred) {
  const keep = select.value || preferred;
  select.replaceChildren(...items.map(([value, label]) => el("option", { value, text: label ?? value })));
  const values = items.map(([v]) => v);
  if (values.includes(keep)) select.value = keep;
  else if (preferred && values.includes(preferred)) select.value = preferred;
}

export class FormLists {
  constructor(form, app) {
    this.form = form;
    this.app = app;
    this.pending = Promise.resolve();
    for (const [field, option] of [["checkpoint", "sd_model_checkpoint"], ["vae", "sd_vae"]]) {
      this.f(field).addEventListener("change", () => this.setOption(option, this.f(field).value));
    }
  }

  f(name) { return this.form.querySelector(`[data-field="${name}"]`); }

  settled() { return this.pending; }

  setOption(key, value) {
    this.pending = api("/sdapi/v1/options", { method: "POST", json: { [key]: value } })
      .then(() => this.app.optionsChanged(this))
      .catch((e) => { if (e.status !== 401) showErrors(this.form, e.message); });
    return this.pending;
  }

  async load(features) {
    const options = await api("/sdapi/v1/options");
    const jobs = [this.samplers(), this.schedulers(), this.checkpoints(options), this.styles(), this.upscalers()];
    if (features.loras) jobs.push(this.loras());
    if (features.vae) jobs.push(this.vaes(options));
    const failed = (await Promise.allSettled(jobs)).find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
    this.f("clip_skip").value = String(options.CLIP_stop_at_last_layers ?? 1);
    this.f("tiling").checked = Boolean(options.tiling);
    this.f("preview_every").value = String(options.show_progress_every_n_steps ?? 10);  // the user's own period
  }

  async samplers() {
    const samplers = await api("/sdapi/v1/samplers");
    fillSelect(this.f("sampler_name"), samplers.map((s) => [s.name]), "Euler a");
    fillSelect(this.f("hr_sampler_name"), [["Use same sampler"], ...samplers.map((s) => [s.name])], "Use same sampler");
  }

  async schedulers() {
    const schedules = await api("/sdapi/v1/schedulers");
    fillSelect(this.f("scheduler"), schedules.map((s) => [s.label]), "Automatic");
    fillSelect(this.f("hr_scheduler"), [["Use same scheduler"], ...schedules.map((s) => [s.label])], "Use same scheduler");
  }

  async checkpoints(options) {
    const models = await api("/sdapi/v1/sd-models");
    const current = String(options.sd_model_checkpoint || "");
    const preferred = (models.find((m) => m.title.startsWith(current) || `${m.model_name}.safetensors` === current)
      || models[0] || {}).title;
    this.f("checkpoint").value = "";  // the user's option wins over what was shown before
    fillSelect(this.f("checkpoint"), models.map((m) => [m.title, m.model_name]), preferred);
    fillSelect(this.f("refiner_checkpoint"), [["None"], ...models.map((m) => [m.title, m.model_name])], "None");
  }

  async vaes(options) {
    const vaes = await api("/sdapi/v1/sd-vae");
    this.f("vae").value = "";
    fillSelect(this.f("vae"), [["Automatic"], ["None"], ...vaes.map((v) => [v.model_name])],
      String(options.sd_vae || "Automatic"));
  }

  async loras() {
    const loras = await api("/sdapi/v1/loras");
    const select = this.f("lora");
    fillSelect(select, loras.map((l) => [l.name, l.alias && l.alias !== l.name ? `${l.name} (${l.alias})` : l.name]));
    select.disabled = loras.length === 0;
    if (!loras.length) select.replaceChildren(el("option", { value: "", text: "no LoRAs yet: upload one in Files" }));
    this.form.querySelector('[data-action="insert-lora"]').disabled = loras.length === 0;
  }

  async styles() {
    const styles = await api("/sdapi/v1/prompt-styles");
    const select = this.f("styles");
    const keep = new Set([...select.selectedOptions].map((o) => o.value));
    select.replaceChildren(...styles.map((s) => el("option", { value: s.name, text: s.name, selected: keep.has(s.name) })));
    select.closest(".field").hidden = styles.length === 0;  // no styles saved: nothing to pick
  }

  async upscalers() {
    const latent = await api("/sdapi/v1/latent-upscale-modes");
    fillSelect(this.f("hr_upscaler"), [...latent.map((m) => [m.name]), ...IMAGE_UPSCALERS.map((n) => [n])], "Latent");
  }

  insertLora() {
    const name = this.f("lora").value;
    if (!name) return;
    const box = this.f("prompt");
    const tag = `<lora:${name}:1>`;
    const at = box.selectionEnd ?? box.value.length;
    const before = box.value.slice(0, at);
    const sep = before && !/[\s,]$/.test(before) ? ", " : "";
    box.value = before + sep + tag + box.value.slice(at);
    box.focus();
  }
}
