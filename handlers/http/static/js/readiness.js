// Which parts of the page have no models to run with: their tab or control is hidden, and admins are told
// where the models go (a user cannot add public models; an empty Prompt tab only answered errors).

import { api } from "./api.js";

async function count(path, pick) {
  try { return pick(await api(path)).length; } catch (e) { if (e.status === 401) throw e; return -1; }
}

export async function missingModels(features) {
  const checks = [count("/sdapi/v1/sd-models", (d) => d)];
  checks.push(features.beautifulprompt ? count("/beautifulprompt/models", (d) => d.models || []) : 1);
  checks.push(features.controlnet ? count("/controlnet/model_list", (d) => d.model_list || []) : 1);
  const [checkpoints, prompts, controlnets] = await Promise.all(checks);
  const out = [];
  if (checkpoints === 0) out.push({ what: "No checkpoints", hint: "put a .safetensors checkpoint in public/models/Stable-diffusion/ (txt2img cannot run)." });
  if (prompts === 0) out.push({ tab: "prompt", what: "Prompt tab hidden", hint: "no prompt models: put a transformers folder (config.json, tokenizer files, model.safetensors) in public/models/prompt/<name>/." });
  if (controlnets === 0) out.push({ feature: "controlnet", what: "ControlNet hidden", hint: "no ControlNet models: put them in public/models/ControlNet/." });
  return out;
}
