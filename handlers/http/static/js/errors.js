// API error messages shown next to the field they concern ("width: `width` has to be a multiple of 8 …").

// API field names → the form's data-for names, where they differ.
const ALIASES = {
  sampler_index: "sampler_name", sd_model_checkpoint: "checkpoint", sd_vae: "vae", init_images: "init_images",
  image_link: "init_images", mask: "mask", controlnet: "controlnet",
};

function fieldFromLocation(loc) {
  const parts = loc.split(".");
  // Settings passed through alwayson_scripts / override_settings are named by their second part.
  if ((parts[0] === "alwayson_scripts" || parts[0] === "override_settings") && parts.length > 1) return parts[1];
  return parts[0];
}

// Split a detail string into [field or null, message] pairs.
export function fieldErrors(detail) {
  return String(detail).split("; ").map((part) => {
    const loc = part.match(/^([A-Za-z_][\w]*(?:\.[\w]+)*): ([\s\S]*)$/);
    if (loc) return [fieldFromLocation(loc[1]), loc[2]];
    const named = part.match(/`([A-Za-z_][\w]*)/);
    return [named ? named[1] : null, part];
  });
}

export function clearErrors(root) {
  root.querySelectorAll(".err").forEach((e) => { e.textContent = ""; });
  root.querySelectorAll(".field.invalid").forEach((f) => f.classList.remove("invalid"));
}

function shown(node) {
  const hidden = node.closest("[hidden]");
  return !hidden;
}

// Put each message next to its field when the form has one, else in the form's general error slot.
export function showErrors(root, detail) {
  for (const [field, message] of fieldErrors(detail)) {
    const name = field ? (ALIASES[field] || field) : null;
    const box = name && [...root.querySelectorAll(`.field[data-for="${CSS.escape(name)}"]`)].find(shown);
    // A message never goes missing: without a field or a general slot it joins the first message box.
    const slot = box ? box.querySelector(".err") : root.querySelector(".err.general") || root.querySelector(".err");
    if (box) box.classList.add("invalid");
    slot.textContent = slot.textContent ? `${slot.textContent}\n${message}` : message;
  }
}
