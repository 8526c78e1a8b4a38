// A finished generation on the page, by A1111's layout of `images`: the grid first only when the response
// says so (`index_of_first_image`), then one image per infotext, then ControlNet's detected maps.

import { el, imageUrl } from "./api.js";

export function splitImages(res) {
  const info = typeof res.info === "string" ? JSON.parse(res.info || "{}") : (res.info || {});
  const first = info.index_of_first_image || 0;
  const texts = info.infotexts || [];
  const generated = Math.max(texts.length - first, 0);
  const urls = ((res.parameters || {}).image_url || "").split(",").filter(Boolean);
  const sources = res.images && res.images.length ? res.images.map((b) => ({ b64: b })) : urls.map((u) => ({ url: u }));
  return sources.map((src, i) => {
    const kind = i < first ? "grid" : i < first + generated ? "image" : "map";
    const infotext = kind === "grid" ? texts[0] || "" : kind === "image" ? texts[i] || "" : "";
    return { ...src, kind, infotext, index: i - first, url: src.url || urls[i] || "" };
  });
}

async function srcOf(item) {
  return item.b64 ? `data:image/png;base64,${item.b64}` : imageUrl(item.url);
}

// The figures for one response; `actions(item, src)` gives the buttons of a generated image.
export async function resultFigures(res, actions) {
  const params = res.parameters || {};
  const nsfw = params.nsfw || [];
  const seeds = String(params.seed || "").split(",");
  const figures = [];
  for (const item of splitImages(res)) {
    let src = "";
    try { src = await srcOf(item); } catch { continue; }
    const name = item.url ? item.url.split("/").pop().split("?")[0] : `easel-${item.kind}-${item.index}.png`;
    const censored = item.kind === "grid" ? nsfw.some(Boolean) : item.kind === "image" && Boolean(nsfw[item.index]);
    const label = { grid: "grid", map: "ControlNet map", image: null }[item.kind];
    const buttons = el("div", { class: "buttons" }, el("a", { class: "button", href: src, download: name, text: "Download" }),
      item.kind === "image" ? actions({ ...item, seed: seeds[item.index] }, src) : null);
    figures.push(el("figure", { class: `out ${item.kind}`, "data-kind": item.kind },
      el("img", { src, alt: label || item.infotext.split("\n")[0] || "generated image" }),
      el("figcaption", {},
        label ? el("strong", { text: label }) : null,
        censored ? el("span", { class: "badge", text: "censored (NSFW)" }) : null,
        item.infotext ? el("pre", { class: "infotext", text: item.infotext }) : null,
        buttons)));
  }
  const t = params.timings;
  if (t && typeof t.generate_s === "number") {
    figures.push(el("p", { class: "meta", text:
      `seed ${params.seed} · generate ${t.generate_s.toFixed(2)} s · total ${(params.total_time || 0).toFixed(2)} s` }));
  }
  return figures;
}
