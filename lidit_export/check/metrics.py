"""Error metrics for parity: tensors (max abs, relative L2, cosine) and images (PSNR, SSIM)."""
from __future__ import annotations

import numpy as np


def tensor_errors(actual: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    a = np.asarray(actual, dtype=np.float64).ravel()
    r = np.asarray(reference, dtype=np.float64).ravel()
    diff = a - r
    ref_norm = np.linalg.norm(r)
    denom = np.linalg.norm(a) * ref_norm
    return {
        "max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
        "rel_l2": float(np.linalg.norm(diff) / ref_norm) if ref_norm > 0 else float(np.linalg.norm(diff)),
        "cosine": float(a @ r / denom) if denom > 0 else float(np.array_equal(a, r)),
    }


def psnr(actual: np.ndarray, reference: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((np.asarray(actual, np.float64) - np.asarray(reference, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def _gaussian_blur(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    x = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, x)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, x)


def ssim(actual: np.ndarray, reference: np.ndarray, peak: float = 255.0) -> float:
    """SSIM of Wang et al. 2004 (11x11 Gaussian window, sigma 1.5), averaged over channels; (H, W, C) images."""
    a = np.asarray(actual, np.float64)
    r = np.asarray(reference, np.float64)
    if a.ndim == 2:
        a, r = a[..., None], r[..., None]
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    scores = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch], r[..., ch]
        mx, my = _gaussian_blur(x), _gaussian_blur(y)
        vx = _gaussian_blur(x * x) - mx**2
        vy = _gaussian_blur(y * y) - my**2
        cov = _gaussian_blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        scores.append(s.mean())
    return float(np.mean(scores))
