// The generation form ↔ the A1111 request body. Every control that is sent carries data-api (the API field,
// `override_settings.X` for an option) and data-kind (int / float / bool / str / list); nothing else is sent.

// A control is sent unless its group is switched off or it belongs to the other mode / no mask.
function active(node, form) {
  const group = node.closest("[data-group]");
  if (group && !node.hasAttribute("data-toggle")) {
    const toggle = group.querySelector("[data-toggle]");
    if (toggle && !toggle.checked) return false;
  }
  const hidden = node.closest("[hidden]");
  return !hidden || !form.contains(hidden);
}

function valueOf(node) {
  const kind = node.dataset.kind || (node.type === "number" ? "num" : node.type === "checkbox" ? "bool" : "str");
  if (node.type === "checkbox") return node.checked;
  if (kind === "list") return [...node.selectedOptions].map((o) => o.value);
  const raw = node.value.trim();
  if (kind === "bool") return raw === "true";
  if (kind === "str") return node.value;
  if (raw === "") return undefined;  // an empty box: the server's default
  return kind === "int" || kind === "num" ? Number(raw) : raw;
}

// The body's plain fields and its override_settings, from the form as it stands.
export function readFields(form, { inpaint }) {
  const body = {};
  const overrides = {};
  for (const node of form.querySelectorAll("[data-api]")) {
    if (!active(node, form)) continue;
    if (node.closest(".inpaint-only") && !inpaint) continue;
    const value = valueOf(node);
    if (value === undefined || (node.tagName === "SELECT" && value === "" && node.dataset.kind !== "str")) continue;
    const name = node.dataset.api;
    if (name.startsWith("override_settings.")) overrides[name.slice(18)] = value;
    else body[name] = value;
  }
  return { body, overrides };
}

// A1111 infotext keys (as /sdapi/v1/png-info parses them) → this form's controls.
const INFOTEXT = {
  Prompt: "prompt", "Negative prompt": "negative_prompt", Steps: "steps", Sampler: "sampler_name",
  "Schedule type": "scheduler", "CFG scale": "cfg_scale", Seed: "seed", "Size-1": "width", "Size-2": "height",
  "Clip skip": "clip_skip", "Variation seed": "subseed", "Variation seed strength": "subseed_strength",
  "Hires upscale": "hr_scale", "Hires steps": "hr_second_pass_steps", "Hires upscaler": "hr_upscaler",
  "Denoising strength": "denoising_strength", "Hires sampler": "hr_sampler_name", "Hires schedule type": "hr_scheduler",
  "Hires prompt": "hr_prompt", "Hires negative prompt": "hr_negative_prompt", Eta: "eta", "Eta DDIM": "eta",
  "Sigma churn": "s_churn", "Sigma tmin": "s_tmin", "Sigma tmax": "s_tmax", "Sigma noise": "s_noise",
};

export function fieldsFromInfotext(parameters) {
  const out = {};
  for (const [key, name] of Object.entries(INFOTEXT)) {
    if (parameters[key] !== undefined && parameters[key] !== "") out[name] = String(parameters[key]);
  }
  if (parameters["Hires upscale"] || parameters["Hires upscaler"]) out.enable_hr = true;
  if (parameters["Variation seed strength"] && Number(parameters["Variation seed strength"]) > 0) out.variation_on = true;
  return out;
}

// Set controls by their data-field name; a select keeps its value only when the option exists.
export function applyFields(form, values) {
  for (const [name, value] of Object.entries(values)) {
    const node = form.querySelector(`[data-field="${name}"]`);
    if (!node || value === undefined || value === null || value === "") continue;
    if (node.type === "checkbox") {
      node.checked = value === true || value === "true";
      const group = node.closest("details");
      if (group && node.checked) group.open = true;
    } else if (node.tagName === "SELECT" && name !== "styles") {
      if ([...node.options].some((o) => o.value === String(value))) node.value = String(value);
    } else if (node.tagName !== "SELECT") {
      node.value = value;
    }
  }
}

// What "send to" and "re-run" carry: the form's values by data-field.
export function snapshot(form) {
  const out = {};
  for (const node of form.querySelectorAll("[data-field]")) {
    if (node.type === "file" || node.dataset.field === "styles") continue;
    out[node.dataset.field] = node.type === "checkbox" ? node.checked : node.value;
  }
  return out;
}

// A1111's infotext → its keys ("Prompt", "Negative prompt", "Steps", "Size-1", ...), as png-info parses it:
// the prompt lines, an optional "Negative prompt:" part, and a last line of `key: value` pairs.
export function parseInfotext(text) {
  const lines = String(text || "").trim().split("\n");
  const last = lines.length > 1 || /^\w[\w ]*: /.test(lines[0] || "") ? lines[lines.length - 1] : "";
  const pairs = [...last.matchAll(/\s*([\w ./-]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)/g)];
  const out = {};
  if (pairs.length >= 3) lines.pop();
  for (const [, key, raw] of pairs.length >= 3 ? pairs : []) {
    const value = raw.startsWith('"') ? JSON.parse(raw) : raw.trim();
    const size = value.match(/^(\d+)x(\d+)$/);
    if (size) { out[`${key}-1`] = size[1]; out[`${key}-2`] = size[2]; } else out[key] = value;
  }
  const neg = lines.findIndex((l) => l.startsWith("Negative prompt:"));
  out.Prompt = (neg < 0 ? lines : lines.slice(0, neg)).join("\n");
  if (neg >= 0) out["Negative prompt"] = [lines[neg].slice(16).trim(), ...lines.slice(neg + 1)].join("\n");
  return out;
}
