"""Live previews for GET /sdapi/v1/progress: A1111's "Approx cheap" method, a fixed linear map from the four
latent channels to RGB (modules/sd_samplers_common.py), so a preview costs a 4×3 matrix product, no VAE."""

from __future__ import annotations

import base64
import io

# Per latent channel, its (R, G, B) contribution, from A1111's samples_to_image_tensor approximation.
COEFFICIENTS = {
    "sd": ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    "sdxl": ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163),
             (-0.3730, -0.2499, -0.2088)),
}


def preview_png_b64(latents, family: str = "sd") -> str | None:
    """A base64 PNG of the first image's latents (1, 4, h, w), or None when they are not 4-channel."""
    if latents is None or latents.ndim != 4 or latents.shape[1] != 4:
        return None  # before importing torch: the web tier has none (its previews come encoded)
    import torch
    from PIL import Image

    coefs = torch.tensor(COEFFICIENTS.get(family, COEFFICIENTS["sd"]), dtype=torch.float32)
    rgb = torch.einsum("lxy,lr->xyr", latents[0].float().cpu(), coefs)
    pixels = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
