// Drag-and-drop onto any file field (its label or zone) and paste from the clipboard: the file goes into the
// <input type=file> as if chosen, so one "change" handler serves all three ways in.

export function putFile(input, file) {
  const dt = new DataTransfer();
  dt.items.add(file);
  input.files = dt.files;
  input.dispatchEvent(new Event("change", { bubbles: true }));
}

function imageFile(list) {
  return [...(list || [])].find((f) => f.type.startsWith("image/")) || null;
}

// `zone` (an element) receives drops for `input`; the drop highlights while dragging over it.
export function dropInto(zone, input) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();  // the innermost zone wins (a mask field inside the image card)
    zone.classList.remove("dragging");
    const file = imageFile(e.dataTransfer && e.dataTransfer.files);
    if (file) putFile(input, file);
  });
}

// A pasted image goes to `input` while `isActive()` (the tab is the one on screen).
export function pasteInto(input, isActive) {
  document.addEventListener("paste", (e) => {
    if (!isActive()) return;
    const file = imageFile(e.clipboardData && e.clipboardData.files);
    if (file) { e.preventDefault(); putFile(input, file); }
  });
}

export function dataUrlToFile(dataUrl, name = "image.png") {
  const [head, b64] = dataUrl.split(",");
  const type = (head.match(/data:([^;]+)/) || [])[1] || "image/png";
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new File([bytes], name, { type });
}
