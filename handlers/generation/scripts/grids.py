"""A1111's grid helpers for scripts: image_grid with rows, labelled grids (draw_grid_annotations), and the
split / combine of overlapping tiles SD upscale uses (modules/images.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(images: list[Image.Image], rows: int | None = None) -> Image.Image:
    """Cells left to right, `rows` rows (A1111's default: round(sqrt(n)))."""
    if rows is None:
        rows = max(1, min(len(images), round(math.sqrt(len(images)))))
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    return grid


def _font(size: int):
    try:
        return ImageFont.load_default(size=max(8, size))
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def annotate(grid: Image.Image, width: int, height: int, x_labels: list[str], y_labels: list[str],
             margin: int = 0) -> Image.Image:
    """Column labels above, row labels left of a grid of width × height cells (A1111's paddings: a label row
    1.5 lines tall, a label column 3/4 of a cell wide; none where every label is empty)."""
    font_size = (width + height) // 25
    font = _font(font_size)
    cols, rows = grid.width // width, grid.height // height
    pad_left = width * 3 // 4 if any(y_labels) else 0
    pad_top = font_size * 3 // 2 + font_size if any(x_labels) else 0
    out = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1), grid.height + pad_top + margin * (rows - 1)),
                    "white")
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            out.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))
    draw = ImageDraw.Draw(out)
    for col, text in enumerate(x_labels[:cols]):
        x = pad_left + (width + margin) * col + width / 2
        draw.text((x, pad_top / 2), str(text), fill="black", font=font, anchor="mm")
    for row, text in enumerate(y_labels[:rows]):
        y = pad_top + (height + margin) * row + height / 2
        draw.text((pad_left / 2, y), str(text), fill="black", font=font, anchor="mm")
    return out


@dataclass
class Tiles:
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int
    rows: list[tuple[int, list[list]]] = field(default_factory=list)  # (y, [[x, tile image], ...])


def split_grid(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> Tiles:
    """Overlapping tiles covering the picture, spread evenly, the last flush with the edge (A1111 split_grid)."""
    w, h = image.size
    cols = max(1, math.ceil((w - overlap) / (tile_w - overlap)))
    rows = max(1, math.ceil((h - overlap) / (tile_h - overlap)))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    tiles = Tiles(tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = min(int(row * dy), h - tile_h)
        cells = []
        for col in range(cols):
            x = min(int(col * dx), w - tile_w)
            cells.append([x, image.crop((x, y, x + tile_w, y + tile_h))])
        tiles.rows.append((y, cells))
    return tiles


def combine_grid(tiles: Tiles) -> Image.Image:
    """Paste the tiles back, each overlap blended by a linear ramp (A1111 combine_grid)."""
    ov = tiles.overlap
    ramp_w = Image.fromarray((np.arange(ov, dtype=np.float32)[None, :].repeat(tiles.tile_h, 0) * 255 / max(ov, 1))
                             .astype(np.uint8), "L") if ov else None
    ramp_h = Image.fromarray((np.arange(ov, dtype=np.float32)[:, None].repeat(tiles.image_w, 1) * 255 / max(ov, 1))
                             .astype(np.uint8), "L") if ov else None
    combined = Image.new("RGB", (tiles.image_w, tiles.image_h))
    for y, cells in tiles.rows:
        row = Image.new("RGB", (tiles.image_w, tiles.tile_h))
        for x, tile in cells:
            if x == 0 or not ov:
                row.paste(tile, (x, 0))
                continue
            row.paste(tile.crop((0, 0, ov, tiles.tile_h)), (x, 0), mask=ramp_w)
            row.paste(tile.crop((ov, 0, tiles.tile_w, tiles.tile_h)), (x + ov, 0))
        if y == 0 or not ov:
            combined.paste(row, (0, y))
            continue
        combined.paste(row.crop((0, 0, row.width, ov)), (0, y), mask=ramp_h)
        combined.paste(row.crop((0, ov, row.width, tiles.tile_h)), (0, y + ov))
    return combined
