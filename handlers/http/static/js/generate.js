// The txt2img and img2img/inpaint tabs: one form (cloned from #gen-template), lists from the API,
// Generate with step progress, results with infotext, "send to img2img".

import { api, el, imageUrl } from "./api.js";
import { clearErrors, showErrors } from "./errors.js";
import { MaskPainter, fileToDataUrl, stripDataUrl } from "./mask.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const POLL_MS = 250;

function fillSelect(select, items, preferred) {
  const keep = select.value || preferred;
  select.replaceChildren(...items.map(([value, label]) => el("option", { value, text: label ?? value })));
  const values = items.map(([v]) => v);
  if (values.includes(keep)) select.value = keep;
  else if (preferred && values.includes(preferred)) select.value = preferred;
}

export class GenTab {
  constructor(section, mode, app) {
    this.section = section;
    this.mode = mode;
    this.app = app;
    this.form = document.getElementById("gen-template").content.firstElementChild.cloneNode(true);
    this.form.dataset.mode = mode;
    section.append(this.form);
    this.results = this.form.querySelector(".results");
    this.progress = this.form.querySelector(".progress");
    this.painter = mode === "img2img" ? new MaskPainter(this.form) : null;
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.generate(); });
    this.form.querySelector('[data-action="insert-lora"]').addEventListener("click", () => this.insertLora());
    if (this.painter) {
      this.f("init_file").addEventListener("change", async (e) => {
        const file = e.target.files[0];
        if (file) await this.setInitImage(await fileToDataUrl(file));
      });
    }
  }

  f(name) { return this.form.querySelector(`[data-field="${name}"]`); }

  value(name) {
    const raw = this.f(name).value.trim();
    return raw === "" ? null : Number(raw);
  }

  // --- lists from the API; a control whose route the server lacks stays hidden ---
  async load(features) {
    for (const node of this.form.querySelectorAll("[data-feature]")) node.hidden = !features[node.dataset.feature];
    const jobs = [this.loadSamplers(), this.loadCheckpoints()];
    if (features.loras) jobs.push(this.loadLoras());
    if (features.vae) jobs.push(this.loadVaes());
    if (features.controlnet) jobs.push(this.loadControlNet());
    const failed = (await Promise.allSettled(jobs)).filter((r) => r.status === "rejected" && r.reason.status !== 401);
    const general = this.form.querySelector(".err.general");
    general.textContent = failed.length ? `Could not load some lists: ${failed[0].reason.message}` : "";
  }

  async loadSamplers() {
    const samplers = await api("/sdapi/v1/samplers");
    fillSelect(this.f("sampler_name"), samplers.map((s) => [s.name]), "Euler a");
  }

  async loadCheckpoints() {
    const [models, options] = await Promise.all([api("/sdapi/v1/sd-models"), api("/sdapi/v1/options")]);
    const current = String(options.sd_model_checkpoint || "");
    const preferred = (models.find((m) => m.title.startsWith(current) || `${m.model_name}.safetensors` === current)
      || models[0] || {}).title;
    fillSelect(this.f("checkpoint"), models.map((m) => [m.title, m.model_name]), preferred);
  }

  async loadLoras() {
    const loras = await api("/sdapi/v1/loras");
    const select = this.f("lora");
    fillSelect(select, loras.map((l) => [l.name, l.alias && l.alias !== l.name ? `${l.name} (${l.alias})` : l.name]));
    select.disabled = loras.length === 0;
    if (!loras.length) select.replaceChildren(el("option", { value: "", text: "no LoRAs yet: upload one in Files" }));
    this.form.querySelector('[data-action="insert-lora"]').disabled = loras.length === 0;
  }

  async loadVaes() {
    const vaes = await api("/sdapi/v1/sd-vae");
    fillSelect(this.f("vae"), [["Automatic"], ["None"], ...vaes.map((v) => [v.model_name])], "Automatic");
  }

  async loadControlNet() {
    const [modules, models] = await Promise.all([api("/controlnet/module_list"), api("/controlnet/model_list")]);
    fillSelect(this.f("cn_module"), (modules.module_list || []).map((m) => [m]), "none");
    fillSelect(this.f("cn_model"), (models.model_list || []).map((m) => [m]));
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

  // --- the request, in the A1111 shape ---
  async request() {
    const body = {
      prompt: this.f("prompt").value,
      negative_prompt: this.f("negative_prompt").value,
      sampler_name: this.f("sampler_name").value || null,
      steps: this.value("steps"), cfg_scale: this.value("cfg_scale"), seed: this.value("seed"),
      width: this.value("width"), height: this.value("height"),
      batch_size: this.value("batch_size"), n_iter: this.value("n_iter"),
      alwayson_scripts: {},
    };
    if (this.f("checkpoint").value) body.alwayson_scripts.sd_model_checkpoint = this.f("checkpoint").value;
    const vae = this.f("vae");
    if (!vae.closest("[data-feature]").hidden && vae.value && vae.value !== "Automatic") {
      body.alwayson_scripts.sd_vae = vae.value;
    }
    const cn = await this.controlNetUnit();
    if (cn) body.alwayson_scripts.controlnet = { args: [cn] };
    if (this.mode === "img2img") Object.assign(body, await this.img2imgFields());
    return body;
  }

  async controlNetUnit() {
    if (this.form.querySelector(".controlnet").hidden || !this.f("cn_enabled").checked) return null;
    const file = this.f("cn_file").files[0];
    return {
      enabled: true, module: this.f("cn_module").value || "none", model: this.f("cn_model").value || null,
      weight: this.value("cn_weight"), image: file ? stripDataUrl(await fileToDataUrl(file)) : null,
    };
  }

  async img2imgFields() {
    const init = this.painter.imageBase64();
    if (!init) throw Object.assign(new Error("init_images: choose an image first"), { local: true });
    const fields = { init_images: [init], denoising_strength: this.value("denoising_strength") };
    const maskFile = this.f("mask_file").files[0];
    const mask = maskFile ? stripDataUrl(await fileToDataUrl(maskFile)) : this.painter.maskBase64();
    if (mask) Object.assign(fields, { mask, mask_blur: 4, inpainting_fill: 1 });  // 1 = start from the original
    return fields;
  }

  // --- Generate: the sync request runs while /sdapi/v1/progress is polled for this task's steps ---
  async generate() {
    clearErrors(this.form);
    let body;
    try {
      body = await this.request();
    } catch (e) {
      if (!e.local) throw e;
      showErrors(this.form, e.message);
      return;
    }
    const taskId = `web-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    body.force_task_id = taskId;
    const button = this.form.querySelector("button.generate");
    button.disabled = true;
    const polling = { on: true };
    this.showProgress(null);
    const poll = this.pollProgress(taskId, polling);
    const done = () => {  // the poller stops at its next turn; a late answer no longer shows
      polling.on = false;
      this.progress.hidden = true;
      button.disabled = false;
    };
    try {
      const res = await api(`/sdapi/v1/${this.mode}`, { method: "POST", json: body });
      done();
      await this.showResults(res);
    } catch (e) {
      done();
      if (e.status !== 401) showErrors(this.form, e.message);
    }
    await poll;
  }

  async pollProgress(taskId, polling) {
    while (polling.on) {
      try {
        const p = await api("/sdapi/v1/progress");
        if (polling.on && p.state && p.state.job === taskId) this.showProgress(p);
      } catch { /* progress is best effort: the result (or its error) still arrives */ }
      await sleep(POLL_MS);
    }
  }

  showProgress(p) {
    this.progress.hidden = false;
    const bar = this.progress.querySelector("progress");
    const text = this.progress.querySelector(".progress-text");
    if (!p) {
      bar.removeAttribute("value");  // indeterminate until the first step (model loading, queueing)
      text.textContent = "Starting…";
      return;
    }
    bar.value = p.progress;
    const eta = p.eta_relative > 0 ? ` · ETA ${p.eta_relative.toFixed(1)} s` : "";
    text.textContent = `Step ${p.state.sampling_step}/${p.state.sampling_steps}${eta}`;
  }

  async showResults(res) {
    const params = res.parameters || {};
    const info = JSON.parse(res.info || "{}");
    const urls = (params.image_url || "").split(",").filter(Boolean);
    const count = res.images.length || urls.length;
    const first = info.index_of_first_image || 0;
    const texts = info.infotexts || [];
    const nsfw = params.nsfw || [];
    const figures = [];
    for (let i = 0; i < count; i++) {
      const isGrid = i < first;
      const src = res.images[i] ? `data:image/png;base64,${res.images[i]}` : await imageUrl(urls[i]);
      const name = urls[i] ? urls[i].split("/").pop().split("?")[0] : `easel-${i}.png`;
      figures.push(this.figure({
        src, name, infotext: isGrid ? texts[0] || "" : texts[i - first] || "", isGrid,
        censored: isGrid ? nsfw.some(Boolean) : Boolean(nsfw[i - first]),
      }));
    }
    // ControlNet's detected maps (EAS `image_mask_url`), after the images they guided.
    for (const url of (params.image_mask_url || "").split(",").filter(Boolean)) {
      let src = "";
      try { src = await imageUrl(url); } catch { continue; }
      figures.push(this.figure({ src, name: url.split("/").pop().split("?")[0], infotext: "", isGrid: false,
        censored: false, label: "ControlNet map" }));
    }
    const timing = params.timings ? el("p", { class: "meta", text:
      `seed ${params.seed} · generate ${params.timings.generate_s.toFixed(2)} s · total ${params.total_time.toFixed(2)} s` }) : null;
    this.results.replaceChildren(...figures, ...(timing ? [timing] : []));
  }

  figure({ src, name, infotext, isGrid, censored, label }) {
    const buttons = el("div", { class: "buttons" },
      el("a", { class: "button", href: src, download: name, text: "Download" }));
    if (this.app.features.img2img && !isGrid && !label) {
      buttons.append(el("button", { type: "button", text: "Send to img2img",
        onclick: () => this.app.sendToImg2img(src, this.currentParams()) }));
    }
    return el("figure", { class: "out" },
      el("img", { src, alt: label || (isGrid ? "grid of the batch" : infotext.split("\n")[0] || "generated image") }),
      el("figcaption", {},
        isGrid || label ? el("strong", { text: label || "grid " }) : null,
        censored ? el("span", { class: "badge", text: "censored (NSFW)" }) : null,
        el("pre", { class: "infotext", text: infotext }),
        buttons));
  }

  currentParams() {
    const names = ["prompt", "negative_prompt", "sampler_name", "steps", "cfg_scale", "width", "height", "checkpoint"];
    return Object.fromEntries(names.map((n) => [n, this.f(n).value]));
  }

  applyParams(params) {
    for (const [name, value] of Object.entries(params)) {
      const input = this.f(name);
      if (input && value !== undefined && value !== null && value !== "") input.value = value;
    }
  }

  async setInitImage(dataUrl) {
    const { width, height } = await this.painter.setImage(dataUrl);
    // Like A1111, the output size follows the input (rounded down to the multiple of 8 the API requires).
    this.f("width").value = Math.max(64, width - (width % 8));
    this.f("height").value = Math.max(64, height - (height % 8));
  }
}
