"""Filtering and resampling pieces of the corruptions, batched on ``(B, C, H, W)`` tensors.

Each piece reproduces the semantics of the library call the reference implementation (Hendrycks &
Dietterich's ``make_cifar_c.py`` / ``make_imagenet_c.py``) makes, so that the published parameters mean
the same here:

* :func:`gaussian_blur`: ``scipy.ndimage.gaussian_filter`` / ``skimage.filters.gaussian`` (kernel radius
  ``int(truncate * sigma + 0.5)``, border modes ``nearest``, ``reflect``, ``mirror``);
* :func:`filter2d`: ``cv2.filter2D`` (correlation, border ``BORDER_REFLECT_101`` = ``mirror``);
* :func:`motion_blur_offsets` + :func:`shifted_sum`: ImageMagick's ``MotionBlurImage`` (a one-sided
  Gaussian along a line, each tap an edge-replicated shifted copy);
* :func:`clipped_zoom`: centre crop of ``ceil(side / z)`` then ``scipy.ndimage.zoom(order=1)`` (bilinear with
  aligned corners) and a centre trim back to the input size;
* :func:`bilinear_sample`: ``scipy.ndimage.map_coordinates(order=1)`` / ``cv2.remap`` bilinear sampling
  at arbitrary per-image coordinates with an explicit border mode;
* :func:`box_resize`: Pillow's ``Image.resize(..., BOX)`` as two resampling matrices.

Border modes (``reflect_index``): ``nearest`` repeats the edge (``a a | a b c``), ``reflect`` mirrors about
the edge (``b a | a b c``, scipy's ``reflect``), ``mirror`` mirrors about the edge pixel (``c b | a b c``,
scipy's ``mirror`` = OpenCV's ``BORDER_REFLECT_101``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

BORDERS = ("nearest", "reflect", "mirror")
#: Kernel size (taps) above which :func:`filter2d` convolves through the FFT.
FFT_THRESHOLD = 121


def reflect_index(index: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map integer positions (any, also far outside ``[0, n)``) into ``[0, n)`` by border ``mode``."""
    if mode == "nearest" or n == 1:
        return index.clamp(0, n - 1)
    if mode == "reflect":
        period = 2 * n
        i = index.remainder(period)
        return torch.where(i < n, i, period - 1 - i)
    if mode == "mirror":
        period = 2 * n - 2
        i = index.remainder(period)
        return torch.where(i < n, i, period - i)
    raise ValueError(f"border mode must be one of {BORDERS}, got {mode!r}")


def pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> torch.Tensor:
    """``(..., H, W)`` padded by the given amounts with border ``mode`` (any amount, also beyond H or W)."""
    h, w = x.shape[-2:]
    rows = reflect_index(torch.arange(-top, h + bottom, device=x.device), h, mode)
    cols = reflect_index(torch.arange(-left, w + right, device=x.device), w, mode)
    return x[..., rows, :][..., cols]


def gaussian_kernel1d(sigma: float, truncate: float) -> torch.Tensor:
    """scipy's 1-D Gaussian: radius ``int(truncate * sigma + 0.5)``, weights normalised to sum 1 (float64)."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (t / sigma) ** 2)
    return weights / weights.sum()


def separable(x: torch.Tensor, row: torch.Tensor, column: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel of ``x`` ``(B, C, H, W)`` with 1-D kernels along W (``row``) and H (``column``)
    (odd lengths, centred), borders by ``mode``."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, 1, h, w)
    rw, rh = len(row) // 2, len(column) // 2
    flat = pad(flat, rh, rh, rw, rw, mode)
    flat = F.conv2d(flat, row.to(x).view(1, 1, 1, -1))
    flat = F.conv2d(flat, column.to(x).view(1, 1, -1, 1))
    return flat.view(b, c, h, w)


def gaussian_blur(
    x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "nearest"
) -> torch.Tensor:
    """Gaussian blur of every channel, as ``skimage.filters.gaussian`` (default ``truncate=4``, ``mode='nearest'``).

    ``sigma <= 0`` returns ``x`` unchanged (as scipy does for sigma 0).
    """
    if sigma <= 0:
        return x
    kernel = gaussian_kernel1d(sigma, truncate)
    return separable(x, kernel, kernel, mode)


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "mirror") -> torch.Tensor:
    """Correlate every channel of ``x`` ``(B, C, H, W)`` with one ``(kh, kw)`` kernel (odd sizes), as
    ``cv2.filter2D`` with border ``mode`` (OpenCV's default is ``mirror``). Kernels larger than 11 x 11 go
    through the FFT (as OpenCV does for large kernels)."""
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    flat = pad(x.reshape(b * c, 1, h, w), kh // 2, kh // 2, kw // 2, kw // 2, mode)
    if kh * kw <= FFT_THRESHOLD:
        return F.conv2d(flat, kernel.to(x).view(1, 1, kh, kw)).view(b, c, h, w)
    ph, pw = flat.shape[-2:]
    spectrum = torch.fft.rfft2(flat, s=(ph, pw))
    response = torch.fft.rfft2(kernel.to(flat).flip(0, 1), s=(ph, pw))
    full = torch.fft.irfft2(spectrum * response, s=(ph, pw))  # circular convolution; the valid part is exact
    return full[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w].to(x.dtype).reshape(b, c, h, w)


def shifted_sum(
    x: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, border: str = "nearest"
) -> torch.Tensor:
    """``sum_k weights[b, k] * x[b, :, i - dy[b, k], j - dx[b, k]]`` with edge-replicated borders
    (``border="zeros"``: zero outside the image).

    ``x`` ``(B, C, H, W)``; ``offsets`` int64 ``(B, K, 2)`` as ``(dy, dx)`` (content moves by that much);
    ``weights`` ``(B, K)`` or ``(K,)``. Each image has its own line of taps (e.g. its own blur angle).
    """
    b, c, h, w = x.shape
    k = offsets.shape[1]
    weights = weights.to(x).expand(b, k)
    reach = int(offsets.abs().max().item()) if offsets.numel() else 0
    padded = F.pad(x, (reach,) * 4) if border == "zeros" else pad(x, reach, reach, reach, reach, border)
    out = torch.zeros_like(x)
    shifts, scales = offsets.tolist(), weights.tolist()
    for image in range(b):
        # plain slices of the padded image: far cheaper than gathering every tap by index
        target, source = out[image], padded[image]
        for (dy, dx), weight in zip(shifts[image], scales[image], strict=True):
            top, left = reach - dy, reach - dx
            target.add_(source[:, top : top + h, left : left + w], alpha=weight)
    return out


def motion_blur_offsets(
    radius: float, sigma: float, angles_deg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageMagick's motion-blur taps for each angle: offsets int64 ``(B, K, 2)`` and weights ``(K,)``.

    ``K = 2 * ceil(radius) + 1`` taps along the direction ``angle`` (degrees), weights a one-sided
    Gaussian ``exp(-i^2 / (2 sigma^2))`` normalised to 1; tap ``i`` samples the pixel
    ``(ceil(i sin a - 0.5), ceil(i cos a - 0.5))`` away.
    """
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(i**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).float()
    angle = torch.deg2rad(angles_deg.double().cpu()).view(-1, 1)
    dy = -torch.ceil(i.view(1, -1) * torch.sin(angle) - 0.5)
    dx = -torch.ceil(i.view(1, -1) * torch.cos(angle) - 0.5)
    offsets = torch.stack([dy, dx], dim=2).long().to(angles_deg.device)
    return offsets, weights.to(angles_deg.device)


def directional_blur(x: torch.Tensor, radius: float, sigma: float, angles_deg: torch.Tensor) -> torch.Tensor:
    """Blur every image ``x[b]`` along its own direction ``angles_deg[b]`` (see :func:`motion_blur_offsets`)."""
    offsets, weights = motion_blur_offsets(radius, sigma, angles_deg)
    return shifted_sum(x, offsets, weights)


def zoom_size(side: int, factor: float) -> tuple[int, int, int]:
    """``(crop, top, zoomed)`` of :func:`clipped_zoom` along one axis of length ``side``."""
    crop = int(math.ceil(side / factor))
    top = (side - crop) // 2
    zoomed = int(round(crop * factor))  # scipy.ndimage.zoom's output size
    return crop, top, zoomed


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Magnify ``x`` ``(B, C, H, W)`` by ``factor >= 1`` about its centre, keeping its size.

    The centre ``ceil(H / factor) x ceil(W / factor)`` window is resized by ``factor`` with bilinear
    interpolation on aligned corners (``scipy.ndimage.zoom(order=1)``) and the centre ``H x W`` kept.
    """
    if factor <= 1.0:
        return x
    h, w = x.shape[-2:]
    ch, top, zh = zoom_size(h, factor)
    cw, left, zw = zoom_size(w, factor)
    window = x[..., top : top + ch, left : left + cw]
    if (ch, cw) == (1, 1):
        zoomed = window.expand(*window.shape[:-2], zh, zw)
    else:
        zoomed = F.interpolate(window, size=(zh, zw), mode="bilinear", align_corners=True)
    trim_top, trim_left = (zh - h) // 2, (zw - w) // 2
    return zoomed[..., trim_top : trim_top + h, trim_left : trim_left + w]


def bilinear_sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Sample ``x`` ``(B, C, H, W)`` at real pixel coordinates ``rows``, ``cols`` ``(B, H', W')`` (pixel
    centres at integers) with bilinear interpolation; neighbours outside the image come from border ``mode``."""
    b, c, h, w = x.shape
    r0, c0 = torch.floor(rows), torch.floor(cols)
    fr, fc = (rows - r0).unsqueeze(1), (cols - c0).unsqueeze(1)
    r0, c0 = r0.long(), c0.long()
    flat = x.reshape(b, c, h * w)

    def at(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        index = reflect_index(r, h, mode) * w + reflect_index(q, w, mode)
        return flat.gather(2, index.view(b, 1, -1).expand(b, c, -1)).view(b, c, *rows.shape[1:])

    top = at(r0, c0) * (1 - fc) + at(r0, c0 + 1) * fc
    bottom = at(r0 + 1, c0) * (1 - fc) + at(r0 + 1, c0 + 1) * fc
    return top * (1 - fr) + bottom * fr


@lru_cache(maxsize=64)
def _box_matrix_cached(in_size: int, out_size: int) -> torch.Tensor:
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        centre = (o + 0.5) * scale
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), in_size)
        for i in range(low, high):
            t = (i - centre + 0.5) / filterscale
            if -0.5 < t <= 0.5:  # Pillow's box filter, evaluated at input pixel centres
                matrix[o, i] = 1.0
        total = matrix[o].sum()
        if total > 0:
            matrix[o] /= total
    return matrix


def box_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """``(out_size, in_size)`` float64 matrix of Pillow's ``BOX`` resampling along one axis."""
    return _box_matrix_cached(int(in_size), int(out_size))


def box_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``x`` ``(B, C, H, W)`` to ``size`` ``(H', W')`` as Pillow's ``Image.resize(size, BOX)`` (in float)."""
    h, w = x.shape[-2:]
    rows = box_matrix(h, size[0]).to(x)
    cols = box_matrix(w, size[1]).to(x)
    return torch.einsum("oh,bchw,pw->bcop", rows, x, cols)
