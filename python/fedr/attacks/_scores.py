"""How close a recovered image is to the original: NCC, SSIM, MSE."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedr.errors import FedValueError

__all__ = ["similarity"]


def _ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004) of two 2-D images in [0, 1], uniform ``window``² windows."""
    from numpy.lib.stride_tricks import sliding_window_view

    if a.ndim != 2 or min(a.shape) < window:
        window = max(1, min(a.shape) if a.ndim == 2 else 1)
        if a.ndim != 2:
            a, b = a.reshape(1, -1), b.reshape(1, -1)
            window = 1
    c1, c2 = 0.01**2, 0.03**2

    def local_mean(z: np.ndarray) -> np.ndarray:
        return sliding_window_view(z, (window, window)).mean(axis=(-1, -2))

    mu_a, mu_b = local_mean(a), local_mean(b)
    n = window * window
    # Sample (co)variances, as skimage's default.
    scale = n / (n - 1) if n > 1 else 1.0
    var_a = (local_mean(a * a) - mu_a**2) * scale
    var_b = (local_mean(b * b) - mu_b**2) * scale
    cov = (local_mean(a * b) - mu_a * mu_b) * scale
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim.mean())


def similarity(original: Any, recovered: Any, *, shape: tuple[int, int] | None = (28, 28)) -> dict[str, float]:
    """Score a recovered image against the original.

    The recovered image is first clipped to the pixel range [0, 1] (an attacker
    knows it); then:

    - ``ncc``: normalised cross-correlation (Pearson correlation of the
      pixels), 1 for a perfect recovery, about 0 for an unrelated image;
    - ``ssim``: mean structural similarity (Wang et al. 2004) over 7x7 windows
      of the 2-D image, data range 1;
    - ``mse``: mean squared error of the pixels.

    Args:
        original: The original image, values in [0, 1], any shape with
            ``prod(shape)`` pixels.
        recovered: The recovered image, same number of pixels.
        shape: The 2-D shape for SSIM; ``None`` computes SSIM on the flat vector.

    Returns:
        ``{"ncc": ..., "ssim": ..., "mse": ...}``. ``ncc`` is 0 when either
        image is constant.

    Raises:
        FedValueError: the sizes differ or a value is not finite.
    """
    a = np.asarray(original, dtype=np.float64).ravel()
    b = np.asarray(recovered, dtype=np.float64).ravel()
    if a.size != b.size:
        raise FedValueError(f"recovered: expected {a.size} pixels like the original, got {b.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise FedValueError("original, recovered: values must be finite")
    b = np.clip(b, 0.0, 1.0)
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(da @ da) * float(db @ db))
    ncc = float(da @ db / denom) if denom > 0 else 0.0
    if shape is not None and int(np.prod(shape)) == a.size:
        ssim = _ssim(a.reshape(shape), b.reshape(shape))
    else:
        ssim = _ssim(a, b)
    return {"ncc": ncc, "ssim": ssim, "mse": float(np.mean((a - b) ** 2))}
