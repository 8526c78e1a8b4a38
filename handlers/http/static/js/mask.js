// The img2img input image and an inpaint mask painted over it with the pointer (mouse, pen or finger).

export function fileToDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export function stripDataUrl(dataUrl) {
  return dataUrl.slice(dataUrl.indexOf(",") + 1);
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("init_images: the file is not an image the browser can read"));
    img.src = src;
  });
}

export class MaskPainter {
  constructor(form) {
    this.form = form;
    this.wrap = form.querySelector(".canvas-wrap");
    this.tools = form.querySelector(".mask-tools");
    this.image = form.querySelector(".init-canvas");
    this.overlay = form.querySelector(".mask-canvas");  // what the user sees: red strokes, half transparent
    this.mask = document.createElement("canvas");      // what is sent: white strokes on black
    this.painted = false;
    this.hasImage = false;
    const toggle = form.querySelector('[data-field="paint_mask"]');
    toggle.addEventListener("change", () => this.wrap.classList.toggle("painting", toggle.checked));
    form.querySelector('[data-action="clear-mask"]').addEventListener("click", () => this.clear());
    this.bindPointer();
  }

  async setImage(dataUrl) {
    const img = await loadImage(dataUrl);
    for (const c of [this.image, this.overlay, this.mask]) {
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
    }
    this.image.getContext("2d").drawImage(img, 0, 0);
    this.clear();
    this.hasImage = true;
    this.wrap.hidden = false;
    this.tools.hidden = false;
    return { width: img.naturalWidth, height: img.naturalHeight };
  }

  clear() {
    this.overlay.getContext("2d").clearRect(0, 0, this.overlay.width, this.overlay.height);
    const m = this.mask.getContext("2d");
    m.fillStyle = "#000";
    m.fillRect(0, 0, this.mask.width, this.mask.height);
    this.painted = false;
  }

  imageBase64() {
    return this.hasImage ? stripDataUrl(this.image.toDataURL("image/png")) : null;
  }

  maskBase64() {
    return this.painted ? stripDataUrl(this.mask.toDataURL("image/png")) : null;
  }

  bindPointer() {
    let last = null;  // the previous point of the stroke: segments join points, so fast moves leave no gaps
    const brush = this.form.querySelector('[data-field="brush"]');
    const paint = (e) => {
      const rect = this.overlay.getBoundingClientRect();
      const point = [((e.clientX - rect.left) / rect.width) * this.overlay.width,
        ((e.clientY - rect.top) / rect.height) * this.overlay.height];
      const from = last || point;
      const width = Number(brush.value) * (this.overlay.width / rect.width);  // brush size is in screen pixels
      // The overlay is opaque red under CSS opacity, so crossing strokes do not darken.
      for (const [canvas, color] of [[this.overlay, "#ff4040"], [this.mask, "#fff"]]) {
        const ctx = canvas.getContext("2d");
        ctx.strokeStyle = color;
        ctx.lineWidth = width;
        ctx.lineCap = "round";
        ctx.beginPath();
        ctx.moveTo(...from);
        ctx.lineTo(...point);
        ctx.stroke();
      }
      last = point;
      this.painted = true;
    };
    this.overlay.addEventListener("pointerdown", (e) => {
      last = null;
      this.overlay.setPointerCapture(e.pointerId);
      paint(e);
    });
    this.overlay.addEventListener("pointermove", (e) => { if (this.overlay.hasPointerCapture(e.pointerId)) paint(e); });
    for (const ev of ["pointerup", "pointercancel"]) this.overlay.addEventListener(ev, () => { last = null; });
  }
}
