// A PNG's A1111 `parameters` text, read in the browser from the bytes it downloaded to show the image, so the
// server's gallery listing never has to open an image (tEXt, iTXt and zTXt chunks, as PIL writes them).

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const latin1 = new TextDecoder("latin1");
const utf8 = new TextDecoder("utf-8");

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// The text of one chunk under `keyword`, or null when the chunk holds another keyword.
async function chunkText(type, data, keyword) {
  const nul = data.indexOf(0);
  if (nul < 0 || latin1.decode(data.subarray(0, nul)) !== keyword) return null;
  if (type === "tEXt") return latin1.decode(data.subarray(nul + 1));
  if (type === "zTXt") return latin1.decode(await inflate(data.subarray(nul + 2)));
  // iTXt: keyword \0 compressed? method language \0 translated keyword \0 text (UTF-8)
  const compressed = data[nul + 1] === 1;
  const lang = data.indexOf(0, nul + 3);
  const translated = data.indexOf(0, lang + 1);
  const body = data.subarray(translated + 1);
  return utf8.decode(compressed ? await inflate(body) : body);
}

// `parameters` of a PNG blob; "" when it has none, null when the blob is not a PNG (ask the server instead).
export async function pngParameters(blob, keyword = "parameters") {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = latin1.decode(bytes.subarray(at + 4, at + 8));
    if (type === "IEND") break;
    if (type === "tEXt" || type === "iTXt" || type === "zTXt") {
      try {
        const text = await chunkText(type, bytes.subarray(at + 8, at + 8 + length), keyword);
        if (text !== null) return text;
      } catch { /* a damaged chunk: look at the others */ }
    }
    at += 12 + length;
  }
  return "";
}
