"""Recognisability checks of the fooling probe: transfer to a second model and distance to real images.

A fooling image is only interesting if it does *not* look like its class. Two checks:

* **Transfer**: the probability that a second, independently trained classifier gives the elite's
  class. Near chance (``1 / K``) means the image carries no class evidence the second model agrees
  with. When the two models take different input shapes, images are converted explicitly
  (:func:`adapt_images`): RGB -> grey by luma (ITU-R 601 weights) or grey -> RGB by repetition, then
  an antialiased bilinear resize, then (``normalize=True``) the polarity is set so that the border is
  darker than the image mean and the contrast stretched to the full range. The last step is needed
  for ``digits-cnn`` -> ``digits-mlp``: ``digits-cnn`` is trained on digits painted with random
  foreground and background colours, ``digits-mlp`` on light-on-dark grey digits. The same conversion
  is applied to the real data to measure the second model's accuracy through it (a sanity check of
  the conversion, reported as ``transfer_accuracy_on_data``).
* **Nearest real image**: the RMS pixel distance (in units of the bounds' range, so in ``[0, 1]``)
  from each elite to the closest image of its class in the probe's data, next to the same distance
  between real images of a class (the median nearest-neighbour distance among them).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustcheck.data.dataset import ImageDataset
from robustcheck.errors import UsageError
from robustcheck.models.classifier import ImageClassifier

#: second model used for the transfer check by default, by the probed model's name
DEFAULT_TRANSFER = {"digits-cnn": "digits-mlp", "digits-mlp": "digits-cnn"}
LUMA = (0.299, 0.587, 0.114)
#: real images per class used as queries for the real-to-real baseline (keeps it O(100 N) per class)
BASELINE_QUERIES = 100


def default_transfer_model(model_name: str) -> str | None:
    """The built-in second model for ``model_name`` (a defended ``digits-cnn+jpeg`` counts as ``digits-cnn``)."""
    return DEFAULT_TRANSFER.get(model_name.split("+", 1)[0])


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, channels, H, W)``: luma for RGB -> grey, repetition for grey -> RGB."""
    have = images.shape[1]
    if have == channels:
        return images
    if channels == 1 and have in (3, 4):
        return (images[:, :3] * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if have == 1:
        return images.repeat(1, channels, 1, 1)
    raise UsageError(f"cannot convert {have}-channel images to {channels} channels for the transfer model")


def _dark_background(images: torch.Tensor) -> torch.Tensor:
    """Invert images in ``[0, 1]`` whose one-pixel border is brighter than their mean, then stretch
    each to ``[0, 1]`` (constant images are left as they are)."""
    border = torch.cat(
        [images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1
    ).mean((1, 2))
    flip = (border > images.mean((1, 2, 3))).view(-1, 1, 1, 1)
    images = torch.where(flip, 1.0 - images, images)
    low, high = images.amin((1, 2, 3), keepdim=True), images.amax((1, 2, 3), keepdim=True)
    return torch.where(high > low, (images - low) / (high - low).clamp_min(1e-12), images)


def adapt_images(
    images: torch.Tensor,
    source_bounds: tuple[float, float],
    target_shape: tuple[int, int, int],
    target_bounds: tuple[float, float],
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """Convert images ``(B, C, H, W)`` within ``source_bounds`` to ``target_shape`` within ``target_bounds``.

    Identical shapes only rescale the bounds; otherwise channels, size and (``normalize``) polarity
    and contrast are converted as the module docstring describes.
    """
    low, high = source_bounds
    unit = (images - low) / (high - low)
    if tuple(unit.shape[1:]) != tuple(target_shape):
        channels, height, width = target_shape
        unit = _to_channels(unit, channels)
        if unit.shape[-2:] != (height, width):
            shrink = height < unit.shape[-2] or width < unit.shape[-1]
            unit = F.interpolate(
                unit, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink
            )
        unit = unit.clamp(0.0, 1.0)
        if normalize:
            unit = _dark_background(unit)
    t_low, t_high = target_bounds
    return t_low + (t_high - t_low) * unit


def check_compatible(model: ImageClassifier, transfer: ImageClassifier, num_classes: int) -> None:
    """Both models must name the same classes in the same order (the transfer check compares by index)."""
    count = transfer.num_classes
    if count is not None and count != num_classes:
        raise UsageError(
            f"transfer model {transfer.name!r} has {count} classes, model {model.name!r} has {num_classes}"
        )
    if (
        model.labels is not None
        and transfer.labels is not None
        and list(model.labels) != list(transfer.labels)
    ):
        raise UsageError(
            f"transfer model {transfer.name!r} labels its classes differently from model {model.name!r}"
        )
    if transfer.input_shape is None:
        raise UsageError(
            f"transfer model {transfer.name!r} declares no input_shape; give one (input_shape=[C,H,W])"
        )


def transfer_probabilities(
    transfer: ImageClassifier, images: torch.Tensor, source_bounds: tuple[float, float], *, normalize: bool
) -> torch.Tensor:
    """Class probabilities ``(B, K)`` of ``transfer`` on ``images`` converted to its input shape."""
    assert transfer.input_shape is not None
    shape = (transfer.input_shape[0], transfer.input_shape[1], transfer.input_shape[2])
    adapted = adapt_images(images, source_bounds, shape, transfer.bounds, normalize=normalize)
    return transfer.predict(adapted).double().softmax(1)


def nearest_distances(
    elites: torch.Tensor, classes: torch.Tensor, data: ImageDataset, bounds: tuple[float, float]
) -> torch.Tensor:
    """RMS distance ``(K,)`` (in units of the bounds' range) from ``elites[i]`` to the nearest image of
    class ``classes[i]`` in ``data`` (NaN where the data hold no image of that class)."""
    span = bounds[1] - bounds[0]
    flat = data.x.flatten(1)
    dims = flat.shape[1]
    out = torch.full((len(elites),), math.nan, dtype=torch.float64)
    for i, (elite, cls) in enumerate(zip(elites, classes.tolist(), strict=True)):
        members = flat[data.y == cls]
        if len(members):
            l2 = torch.cdist(elite.flatten().unsqueeze(0), members).min()
            out[i] = float(l2) / math.sqrt(dims) / span
    return out


def real_nearest_baseline(data: ImageDataset, bounds: tuple[float, float]) -> float | None:
    """Median over real images (up to :data:`BASELINE_QUERIES` per class) of the RMS distance to the
    nearest *other* image of the same class, in units of the range; ``None`` without such pairs."""
    span = bounds[1] - bounds[0]
    flat = data.x.flatten(1)
    dims = flat.shape[1]
    nearest = []
    for cls in torch.unique(data.y).tolist():
        members = flat[data.y == cls]
        if len(members) < 2:
            continue
        queries = members[:BASELINE_QUERIES]
        dist = torch.cdist(queries, members)
        dist[torch.arange(len(queries)), torch.arange(len(queries))] = math.inf  # not itself
        nearest.append(dist.min(1).values)
    if not nearest:
        return None
    return float(torch.cat(nearest).median()) / math.sqrt(dims) / span
