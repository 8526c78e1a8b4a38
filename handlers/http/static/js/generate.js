// The txt2img and img2img/inpaint tabs: one form (cloned from #gen-template), Generate with live preview,
// Interrupt / Skip, and a second Generate while one runs goes to the queue (`?task_id=`).

import { api } from "./api.js";
import { ControlNetUnits } from "./controlnet.js";
import { dropInto, pasteInto } from "./drop.js";
import { clearErrors, showErrors } from "./errors.js";
import { applyFields, readFields, snapshot } from "./fields.js";
import { FormLists } from "./lists.js";
import { LiveRun } from "./live.js";
import { MaskPainter, fileToDataUrl, stripDataUrl } from "./mask.js";
import { resultFigures } from "./results.js";
import { ScriptPicker } from "./scripts.js";

const NARROW = "(max-width: 899px)";  // one column: the results are below the form

export function newTaskId() {
  return `web-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

export class GenTab {
  constructor(section, mode, app) {
    this.section = section;
    this.mode = mode;
    this.app = app;
    this.form = document.getElementById("gen-template").content.firstElementChild.cloneNode(true);
    this.form.dataset.mode = mode;
    section.append(this.form);
    for (const n of this.form.querySelectorAll(mode === "txt2img" ? ".img2img-only" : ".txt2img-only")) n.hidden = true;
    this.results = this.form.querySelector(".results");
    this.live = new LiveRun(this.form);
    this.lists = new FormLists(this.form, app);
    this.cn = new ControlNetUnits(this.form);
    this.scripts = new ScriptPicker(this.form, mode);
    this.painter = mode === "img2img" ? new MaskPainter(this.form) : null;
    this.lastSeed = null;
    this.bind();
  }

  bind() {
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.generate(); });
    this.form.addEventListener("keydown", (e) => {  // A1111's Ctrl+Enter (⌘+Enter on a Mac)
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); this.generate(); }
    });
    this.on("insert-lora", () => this.lists.insertLora());
    this.on("seed-random", () => { this.f("seed").value = "-1"; });
    this.on("seed-reuse", () => { if (this.lastSeed !== null) this.f("seed").value = String(this.lastSeed); });
    for (const input of this.form.querySelectorAll('input[type="file"]')) {
      dropInto(input.closest(".drop-zone:not(.img2img-only)") || input.closest(".field") || input.closest("label"), input);
    }
    this.cn.box.addEventListener("change", async (e) => {
      const unit = e.target.closest(".cn-unit");
      if (e.target.dataset.cn === "file" && e.target.files[0]) this.cn.setImage(unit, await fileToDataUrl(e.target.files[0]));
    });
    if (this.painter) {
      const init = this.f("init_file");
      dropInto(this.form.querySelector(".img2img-only"), init);
      pasteInto(init, () => this.app.active === this.mode);
      init.addEventListener("change", async (e) => {
        const file = e.target.files[0];
        if (file) await this.setInitImage(await fileToDataUrl(file));
      });
    }
  }

  on(action, fn) { this.form.querySelector(`[data-action="${action}"]`).addEventListener("click", fn); }

  f(name) { return this.form.querySelector(`[data-field="${name}"]`); }

  async load(features) {
    for (const node of this.form.querySelectorAll("[data-feature]")) node.hidden = !features[node.dataset.feature];
    const jobs = [this.lists.load(features)];
    if (features.controlnet) jobs.push(this.cn.load());
    if (features.scripts) jobs.push(this.scripts.load());
    const failed = (await Promise.allSettled(jobs)).filter((r) => r.status === "rejected" && r.reason.status !== 401);
    const general = this.form.querySelector(".err.general");
    general.textContent = failed.length ? `Could not load some lists: ${failed[0].reason.message}` : "";
  }

  // --- the request, in the A1111 shape ---
  async request() {
    const mask = this.painter ? await this.maskBase64() : null;
    const { body, overrides } = readFields(this.form, { inpaint: Boolean(mask) });
    Object.assign(body, this.scripts.fields());
    body.alwayson_scripts = {};
    if (Object.keys(overrides).length) body.override_settings = overrides;
    if (!this.form.querySelector(".controlnet").hidden) {
      const units = await this.cn.args();
      if (units.length) body.alwayson_scripts.controlnet = { args: units };
    }
    if (this.painter) {
      const init = this.painter.imageBase64();
      if (!init) throw Object.assign(new Error("init_images: choose an image first"), { local: true });
      body.init_images = [init];
      if (mask) body.mask = mask;
    }
    return body;
  }

  async maskBase64() {
    const file = this.f("mask_file").files[0];
    return file ? stripDataUrl(await fileToDataUrl(file)) : this.painter.maskBase64();
  }

  async generate() {
    clearErrors(this.form);
    let body;
    try {
      await this.lists.settled();  // a checkpoint / VAE just picked is the user's option before this runs
      body = await this.request();
    } catch (e) {
      if (e.status === 401) return;
      showErrors(this.form, e.message);
      return;
    }
    if (this.live.running) {
      if (this.app.features.tasks) return this.enqueue(body);
      return showErrors(this.form, "this server has no task queue: wait for the running image, or Interrupt it");
    }
    const taskId = newTaskId();
    body.force_task_id = taskId;
    if (window.matchMedia(NARROW).matches) this.form.querySelector(".gen-results").scrollIntoView({ block: "start" });
    const every = Number((body.override_settings || {}).show_progress_every_n_steps ?? 0);
    const watching = this.live.watch(taskId, every);
    try {
      const res = await api(`/sdapi/v1/${this.mode}`, { method: "POST", json: body });
      this.live.stop();
      await this.showResults(res);
      this.app.tasksChanged();
    } catch (e) {
      this.live.stop();
      if (e.status !== 401) showErrors(this.form, e.message);
    }
    await watching;
  }

  // Generate while one runs: the task goes to the server's queue and shows in the Queue tab.
  async enqueue(body) {
    const note = this.form.querySelector(".queued-note");
    const taskId = newTaskId();
    try {
      const task = await api(`/sdapi/v1/${this.mode}?task_id=${encodeURIComponent(taskId)}`, { method: "POST", json: body });
      this.app.rememberRequest(task.task_id, this.mode, body);
      note.textContent = `Queued as task ${task.task_id} (${task.status}): see the Queue tab.`;
      note.hidden = false;
      this.app.tasksChanged();
    } catch (e) {
      if (e.status !== 401) showErrors(this.form, e.message);
    }
  }

  async showResults(res) {
    const seeds = String((res.parameters || {}).seed || "").split(",").filter(Boolean);
    if (seeds.length) this.lastSeed = Number(seeds[0]);
    const figures = await resultFigures(res, (item, src) => this.app.sendButtons(src, item.infotext, this.snapshot()));
    this.results.replaceChildren(...figures);
    if (window.matchMedia(NARROW).matches) this.results.scrollIntoView({ block: "start" });
  }

  snapshot() { return snapshot(this.form); }

  applyParams(values) { applyFields(this.form, values); }

  async setInitImage(dataUrl) {
    const { width, height } = await this.painter.setImage(dataUrl);
    // Like A1111, the output size follows the input (rounded down to the multiple of 8 the API requires).
    this.f("width").value = Math.max(64, width - (width % 8));
    this.f("height").value = Math.max(64, height - (height % 8));
  }
}

