// ControlNet units in the txt2img / img2img forms: the extension's unit fields, and per preprocessor the
// sliders its `module_detail` lists (Resolution → processor_res, then threshold_a, threshold_b).

import { api, el } from "./api.js";
import { fileToDataUrl, stripDataUrl } from "./mask.js";

const MAX_SHOWN_UNITS = 3;  // the extension's default UI count; the API takes more

function fill(select, values, preferred) {
  const keep = select.value || preferred;
  select.replaceChildren(...values.map((v) => el("option", { value: v, text: v })));
  if (values.includes(keep)) select.value = keep;
}

export class ControlNetUnits {
  constructor(form) {
    this.box = form.querySelector(".cn-units");
    this.units = [];
    this.detail = {};
  }

  async load() {
    const [modules, models, settings] = await Promise.all([
      api("/controlnet/module_list?alias_names=false"), api("/controlnet/model_list"), api("/controlnet/settings")]);
    this.detail = modules.module_detail || {};
    const count = Math.max(1, Math.min(MAX_SHOWN_UNITS, settings.control_net_unit_count || 1));
    while (this.units.length < count) this.units.push(this.addUnit(this.units.length));
    for (const unit of this.units) {
      fill(unit.querySelector('[data-cn="module"]'), modules.module_list || [], "none");
      fill(unit.querySelector('[data-cn="model"]'), ["None", ...(models.model_list || [])], "None");
      this.sliders(unit);
    }
  }

  addUnit(n) {
    const unit = document.getElementById("cn-unit-template").content.firstElementChild.cloneNode(true);
    unit.dataset.unit = String(n);
    unit.querySelector("summary").textContent = `Unit ${n}`;
    unit.open = n === 0;  // the others stay folded, as the extension's tabs do
    unit.querySelector('[data-cn="module"]').addEventListener("change", () => this.sliders(unit));
    this.box.append(unit);
    return unit;
  }

  // The chosen preprocessor's own sliders, with its defaults and bounds.
  sliders(unit) {
    const module = unit.querySelector('[data-cn="module"]').value;
    const specs = (this.detail[module] || {}).sliders || [];
    const names = specs[0] && specs[0].name === "Resolution" ? ["processor_res", "threshold_a", "threshold_b"]
      : ["threshold_a", "threshold_b"];
    unit.querySelector(".cn-sliders").replaceChildren(...specs.map((s, i) => el("label", {},
      s.name, el("input", { type: "number", "data-cn": names[i], value: String(s.value), min: String(s.min),
        max: String(s.max), step: String(s.step ?? 1) }))));
  }

  setImage(unit, dataUrl) {
    unit.dataset.image = stripDataUrl(dataUrl);
    unit.querySelector('[data-cn="enabled"]').checked = true;
  }

  // The enabled units in the extension's API shape.
  async args() {
    const out = [];
    for (const unit of this.units) {
      const q = (name) => unit.querySelector(`[data-cn="${name}"]`);
      if (!q("enabled").checked) continue;
      const file = q("file").files[0];
      const image = file ? stripDataUrl(await fileToDataUrl(file)) : unit.dataset.image || null;
      const arg = {
        enabled: true, module: q("module").value || "none", model: q("model").value === "None" ? null : q("model").value,
        weight: Number(q("weight").value), image, control_mode: Number(q("control_mode").value),
        guidance_start: Number(q("guidance_start").value), guidance_end: Number(q("guidance_end").value),
        resize_mode: Number(q("resize_mode").value), pixel_perfect: q("pixel_perfect").checked,
      };
      for (const name of ["processor_res", "threshold_a", "threshold_b"]) {
        if (q(name) && q(name).value.trim() !== "") arg[name] = Number(q(name).value);
      }
      out.push(arg);
    }
    return out;
  }
}
