"""Pictures of the attacks: a grayscale PNG writer (zlib only) and a tiling of images."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedr.errors import FedValueError

__all__ = ["write_png"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: str | Path, image: Any) -> str:
    """Write a grayscale image to a PNG file (8-bit, no dependencies beyond zlib).

    Args:
        path: The file to write.
        image: A 2-D array of values in [0, 1] (clipped), row 0 at the top.

    Returns:
        The path written, as a string.

    Raises:
        FedValueError: ``image`` is not a non-empty 2-D array of finite values.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise FedValueError(f"image: expected a non-empty 2-D array, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise FedValueError("image: values must be finite")
    pixels = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    height, width = pixels.shape
    # Each scanline starts with filter type 0 (none).
    raw = np.concatenate([np.zeros((height, 1), np.uint8), pixels], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )
    path = Path(path)
    path.write_bytes(data)
    return str(path)


def _grid(rows: Sequence[Sequence[np.ndarray]], *, scale: int = 3, gap: int = 4) -> np.ndarray:
    """Tile 2-D images into one picture: rows of images, white gaps, each pixel ``scale``² pixels."""
    h, w = rows[0][0].shape
    cols = max(len(r) for r in rows)
    cell_h, cell_w = h * scale, w * scale
    out = np.ones((gap + len(rows) * (cell_h + gap), gap + cols * (cell_w + gap)))
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            big = np.kron(np.clip(np.asarray(img, np.float64), 0, 1), np.ones((scale, scale)))
            top, left = gap + i * (cell_h + gap), gap + j * (cell_w + gap)
            # Dark pixels on white: Fashion-MNIST is white on black, so invert for the page.
            out[top : top + cell_h, left : left + cell_w] = 1.0 - big
    return out
