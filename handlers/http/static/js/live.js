// A running generation: steps and the live preview from GET /sdapi/v1/progress (its `current_image`, made
// every N steps as the request's show_progress_every_n_steps asks), and the Interrupt / Skip buttons.

import { api } from "./api.js";

const POLL_MS = 250;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class LiveRun {
  constructor(form) {
    this.progress = form.querySelector(".progress");
    this.bar = this.progress.querySelector("progress");
    this.text = this.progress.querySelector(".progress-text");
    this.preview = form.querySelector(".live-preview");
    this.buttons = [form.querySelector('[data-action="interrupt"]'), form.querySelector('[data-action="skip"]')];
    this.taskId = null;
    this.on = false;
    this.buttons[0].addEventListener("click", () => this.signal("interrupt"));
    this.buttons[1].addEventListener("click", () => this.signal("skip"));
  }

  get running() { return this.on; }

  // Start watching `taskId`; resolves when stop() is called.
  // The preview is only asked for when a new one exists (each `every` steps): decoding costs the server.
  async watch(taskId, every) {
    this.taskId = taskId;
    let step = 0, shownFor = 0;
    this.on = true;
    this.previewed = false;
    this.show(null);
    for (const b of this.buttons) { b.hidden = false; b.disabled = false; }
    while (this.on) {
      try {
        const fresh = every > 0 && Math.floor(step / every) > shownFor;
        const p = await api(`/sdapi/v1/progress?skip_current_image=${!fresh}`);
        if (this.on && p.state && p.state.job === taskId) {
          if (fresh && p.current_image) shownFor = Math.floor(step / every);
          step = p.state.sampling_step;
          this.show(p);
        }
      } catch { /* progress is best effort: the result (or its error) still arrives */ }
      await sleep(POLL_MS);
    }
  }

  stop() {
    this.on = false;
    this.progress.hidden = true;
    this.preview.hidden = true;
    for (const b of this.buttons) b.hidden = true;
  }

  async signal(what) {
    if (!this.on) return;
    if (what === "interrupt") for (const b of this.buttons) b.disabled = true;
    try {
      await api(`/sdapi/v1/${what}`, { method: "POST" });
      this.text.textContent = what === "interrupt" ? "Interrupting…" : "Skipping…";
    } catch (e) {
      this.text.textContent = `${what} failed: ${e.message}`;
    }
  }

  show(p) {
    this.progress.hidden = false;
    if (!p) {
      this.bar.removeAttribute("value");  // indeterminate until the first step (model loading, queueing)
      this.text.textContent = "Starting…";
      return;
    }
    this.bar.value = p.progress;
    const eta = p.eta_relative > 0 ? ` · ETA ${p.eta_relative.toFixed(1)} s` : "";
    const state = p.state.interrupted ? " · interrupting" : p.state.skipped ? " · skipping" : "";
    this.text.textContent = `Step ${p.state.sampling_step}/${p.state.sampling_steps}${eta}${state}`;
    if (p.current_image) {
      const img = this.preview.querySelector("img");
      img.src = `data:image/png;base64,${p.current_image}`;
      this.preview.hidden = false;
      this.previewed = true;
    }
  }
}
