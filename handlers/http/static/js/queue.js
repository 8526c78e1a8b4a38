// Queue & history: the caller's tasks (GET /tasks), newest first, with progress while they run, cancel,
// re-run with the same parameters, and the images of a finished one (GET /tasks/{id}).

import { api, el, formatTime } from "./api.js";
import { clearErrors, showErrors } from "./errors.js";
import { newTaskId } from "./generate.js";
import { resultFigures } from "./results.js";

const POLL_MS = 500;
const LIVE = new Set(["queued", "running"]);

export class QueueTab {
  constructor(section, app) {
    this.section = section;
    this.app = app;
    this.list = section.querySelector(".task-list");
    this.timer = null;
    this.figures = new Map();
    section.querySelector('[data-action="refresh"]').addEventListener("click", () => this.load());
  }

  async load() {
    clearErrors(this.section);
    clearTimeout(this.timer);
    let tasks;
    try {
      tasks = await api("/tasks?limit=50");
    } catch (e) {
      if (e.status !== 401) showErrors(this.section, e.message);
      return;
    }
    this.render(tasks);
    // While something is queued or running and the tab is on screen, follow it.
    if (tasks.some((t) => LIVE.has(t.status)) && !this.section.hidden) {
      this.timer = setTimeout(() => this.load(), POLL_MS);
    }
  }

  render(tasks) {
    const open = new Set([...this.list.querySelectorAll("details[open]")].map((d) => d.dataset.task));
    this.list.replaceChildren(...tasks.map((t) => this.row(t, open.has(t.task_id))));
    this.section.querySelector(".empty").hidden = tasks.length > 0;
  }

  row(t, wasOpen) {
    const p = t.progress || {};
    const bar = t.status === "running" ? el("progress", { max: "1", value: String(p.fraction || 0) }) : null;
    const step = t.status === "running" && p.total ? ` · step ${p.step}/${p.total}` : "";
    // In the summary line, so they show on a closed row; a click there must not open or close it.
    const act = (text, fn) => el("button", { type: "button", text, onclick: (e) => { e.preventDefault(); fn(); } });
    const buttons = el("span", { class: "buttons" },
      LIVE.has(t.status) ? act("Cancel", () => this.cancel(t.task_id)) : act("Re-run", () => this.rerun(t)));
    const images = el("div", { class: "results" });
    const details = el("details", { class: `task ${t.status}`, "data-task": t.task_id, "data-status": t.status },
      el("summary", {},
        el("span", { class: `status ${t.status}`, text: t.status }), " ",
        el("code", { text: t.task_id }), " ",
        el("span", { class: "meta", text: `${t.mode} · ${formatTime(t.created_at)}${step}` }), bar, buttons),
      t.error ? el("p", { class: "err", text: t.error }) : null, images);
    details.addEventListener("toggle", () => { if (details.open) this.images(t, images); });
    if (wasOpen) { details.open = true; }
    return details;
  }

  async images(t, box) {
    if (t.status !== "succeeded" || box.childElementCount) return;
    try {
      // A finished task never changes: its figures are made once and kept across the list's refreshes.
      if (!this.figures.has(t.task_id)) {
        const full = await api(`/tasks/${encodeURIComponent(t.task_id)}`);
        this.figures.set(t.task_id, await resultFigures(full.result || {}, (item, src) => this.app.sendButtons(src, item.infotext, null)));
      }
      box.replaceChildren(...this.figures.get(t.task_id));
    } catch (e) {
      if (e.status !== 401) box.replaceChildren(el("p", { class: "err", text: e.message }));
    }
  }

  async cancel(taskId) {
    try {
      await api(`/tasks/${encodeURIComponent(taskId)}/cancel`, { method: "POST" });
    } catch (e) {
      if (e.status !== 401) showErrors(this.section, e.message);
    }
    await this.load();
  }

  // The same parameters again, as a new queued task: the body this page sent, or the one the result echoes.
  async rerun(t) {
    let body = this.app.rememberedRequest(t.task_id);
    if (!body) {
      try {
        body = ((await api(`/tasks/${encodeURIComponent(t.task_id)}`)).result || {}).parameters || null;
      } catch { body = null; }
    }
    if (!body) return showErrors(this.section, `task ${t.task_id}: its parameters are not known to this browser`);
    const { force_task_id, ...again } = body;
    try {
      const task = await api(`/sdapi/v1/${t.mode}?task_id=${newTaskId()}`, { method: "POST", json: again });
      this.app.rememberRequest(task.task_id, t.mode, again);
    } catch (e) {
      if (e.status !== 401) showErrors(this.section, e.message);
    }
    await this.load();
  }
}
