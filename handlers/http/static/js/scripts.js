// A1111's Script dropdown: the titles GET /sdapi/v1/scripts lists for this tab's mode, and for the chosen one
// a control per argument GET /sdapi/v1/script-info gives (in order: they are sent as `script_args`).

import { api, el } from "./api.js";

function control(arg, i) {
  const v = arg.value;
  const attrs = { "data-script-arg": String(i) };
  if (typeof v === "boolean") return el("label", { class: "check" }, el("input", { type: "checkbox", checked: v, ...attrs }), arg.label);
  if (typeof v === "number") {
    return el("label", {}, arg.label, el("input", { type: "number", value: String(v), step: Number.isInteger(v) ? "1" : "any",
      ...attrs, "data-kind": "num" }));
  }
  const long = /list|prompt inputs/i.test(arg.label || "");
  const input = long ? el("textarea", { rows: "3", ...attrs }) : el("input", { type: "text", ...attrs });
  input.value = v ?? "";
  if (v === null || v === undefined) input.dataset.kind = "nullable";
  return el("label", { class: long ? "wide" : null }, arg.label, input);
}

export class ScriptPicker {
  constructor(form, mode) {
    this.mode = mode;
    this.box = form.querySelector(".script-group");
    this.select = form.querySelector('[data-field="script_name"]');
    this.args = form.querySelector(".script-args");
    this.info = [];
    this.select.addEventListener("change", () => this.render());
  }

  async load() {
    const [titles, info] = await Promise.all([api("/sdapi/v1/scripts"), api("/sdapi/v1/script-info")]);
    this.info = info.filter((s) => s.is_img2img === (this.mode === "img2img"));
    const keep = this.select.value;
    this.select.replaceChildren(el("option", { value: "", text: "None" }),
      ...(titles[this.mode] || []).map((t) => el("option", { value: t, text: t })));
    if ([...this.select.options].some((o) => o.value === keep)) this.select.value = keep;
    this.box.hidden = (titles[this.mode] || []).length === 0;
    this.render();
  }

  render() {
    const script = this.info.find((s) => s.name === this.select.value.toLowerCase());
    this.args.replaceChildren(...(script ? script.args.map(control) : []));
  }

  // { script_name, script_args } for the request, or {} with no script chosen.
  fields() {
    if (this.box.hidden || !this.select.value) return {};
    const args = [...this.args.querySelectorAll("[data-script-arg]")].map((n) => {
      if (n.type === "checkbox") return n.checked;
      if (n.dataset.kind === "num") return Number(n.value);
      if (n.dataset.kind === "nullable" && n.value === "") return null;
      return n.value;
    });
    return { script_name: this.select.value, script_args: args };
  }
}
