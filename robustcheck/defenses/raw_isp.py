"""The RAW camera-pipeline defense (Zhang, Dong, Heide, ECCV 2022: "All You Need is RAW").

Natural RGB images were rendered from Bayer RAW captures by a camera pipeline (ISP). The defense maps
each input image RGB -> RAW -> RGB through a camera pipeline before the classifier, with no
adversarial training:

* ``mode="classic"``: the differentiable Brooks et al. (2019) unprocessing and forward ISP of
  :mod:`robustcheck.ops.camera` with a fixed, documented camera (:class:`~robustcheck.ops.camera.Camera`).
  ``demosaic="2x2"`` (default) models a sensor at twice the image resolution, one RGGB quad per
  pixel: without noise the round trip is near-identity (>= 58 dB PSNR on the bundled data).
  ``demosaic="bilinear"`` models a sensor at the image resolution with kornia's bilinear demosaicing:
  it blurs fine detail (38 dB on digits-rgb32, 23-26 dB on CIFAR-10 / ImageNet samples) and needs even
  H and W.
* ``mode="learned"``: two CNNs (:mod:`robustcheck.zoo.raw_isp`), F: RGB -> packed RAW and
  G: RAW -> RGB, trained on classic-pipeline pairs with sensor-noise augmentation; G denoises.

``noise`` is the shot-noise factor of the sensor model (variance ``noise * raw + read`` with the read
noise from Brooks et al.'s fit, see :func:`~robustcheck.ops.camera.add_sensor_noise`), added to the
RAW image between the two halves; 0 turns it off and the defense is deterministic. With noise the
draws come from a generator seeded with ``seed`` when the defended model is built, so a run is
reproducible. Gradients through both modes are exact (every step is differentiable); attacks on the
noisy defense should use expectation over transformation (``eot`` on the foolbox probes).
"""

from __future__ import annotations

import torch
from torch import nn

from robustcheck.api import Defense
from robustcheck.errors import InputError, UsageError
from robustcheck.models.classifier import ImageClassifier
from robustcheck.ops import camera
from robustcheck.params import Param
from robustcheck.zoo.raw_isp import load_learned_camera

MODES = ("classic", "learned")
#: beyond this shot-noise factor the RAW image is mostly noise (PSNR ~ 17 dB at 0.01)
MAX_NOISE = 0.1


def check_input(x: torch.Tensor, demosaic: str, what: str = "input") -> None:
    """Raise :class:`InputError` with a fix unless ``x`` is ``(B, 3, H, W)`` (even H, W for bilinear)."""
    if x.ndim != 4:
        raise InputError(f"defense 'raw-isp': {what} must have shape (B, 3, H, W), got {tuple(x.shape)}")
    check_shape(tuple(x.shape[1:]), demosaic, what)


def check_shape(shape: tuple[int, ...], demosaic: str, what: str = "input") -> None:
    """:func:`check_input` on a per-image shape ``(C, H, W)``."""
    channels, height, width = shape
    if channels != 3:
        raise InputError(
            f"defense 'raw-isp' needs RGB images (3 channels), {what} has {channels}: a Bayer sensor records "
            "colour. Convert greyscale images to RGB first, e.g. x.repeat(1, 3, 1, 1) or "
            "ImageDataset(x.repeat(1, 3, 1, 1), y), or use a colour data set such as digits-rgb32 (model digits-cnn)"
        )
    if demosaic == "bilinear" and (height % 2 or width % 2):
        raise InputError(
            f"defense 'raw-isp' with demosaic='bilinear' needs even image height and width (whole 2x2 RGGB "
            f"quads), {what} is {height}x{width}: crop or pad the images by one pixel, or use demosaic='2x2'"
        )


class CameraPipeline(nn.Module):
    """Base of both modes: ``(B, 3, H, W)`` images in ``bounds`` -> same shape and range.

    Subclasses implement :meth:`to_raw` and :meth:`to_rgb` on ``[0, 1]`` images; this class checks the
    input, rescales ``bounds`` to ``[0, 1]`` and adds the seeded sensor noise in between.
    """

    def __init__(
        self, noise: float, seed: int, demosaic: str, bounds: tuple[float, float] = (0.0, 1.0)
    ) -> None:
        super().__init__()
        self.noise, self.seed, self.demosaic = float(noise), int(seed), demosaic
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self._generators: dict[torch.device, torch.Generator] = {}

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_rgb(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generator(self, device: torch.device) -> torch.Generator:
        """This pipeline's noise generator on ``device``, seeded with ``seed`` on first use."""
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def add_noise(self, raw: torch.Tensor) -> torch.Tensor:
        if self.noise <= 0:
            return raw
        return camera.add_sensor_noise(raw, self.noise, generator=self.generator(raw.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.demosaic)
        low, high = self.bounds
        unit = (x - low) / (high - low)
        out = self.to_rgb(self.add_noise(self.to_raw(unit)))
        return low + out * (high - low)


class ClassicPipeline(CameraPipeline):
    """Brooks et al. unprocessing -> (noise) -> forward ISP with a fixed :class:`~camera.Camera`.

    The RAW image is a mosaic ``(B, 1, 2H, 2W)`` for ``demosaic="2x2"`` and ``(B, 1, H, W)`` for
    ``"bilinear"``.
    """

    def __init__(
        self,
        noise: float = 0.0,
        seed: int = 0,
        demosaic: str = "2x2",
        bounds: tuple[float, float] = (0.0, 1.0),
        cam: camera.Camera = camera.DEFAULT_CAMERA,
    ) -> None:
        super().__init__(noise, seed, demosaic, bounds)
        self.camera = cam

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        return camera.unprocess(x, self.camera, self.demosaic)

    def to_rgb(self, raw: torch.Tensor) -> torch.Tensor:
        return camera.process(raw, self.camera, self.demosaic)


class LearnedPipeline(CameraPipeline):
    """G(noise(F(x))) with the learned networks of :mod:`robustcheck.zoo.raw_isp`; RAW is packed ``(B, 4, H, W)``."""

    def __init__(
        self,
        noise: float = 0.0,
        seed: int = 0,
        bounds: tuple[float, float] = (0.0, 1.0),
        weights: str | None = None,
    ) -> None:
        super().__init__(noise, seed, "2x2", bounds)
        self.networks = load_learned_camera(weights)

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.networks.f(x)

    def to_rgb(self, raw: torch.Tensor) -> torch.Tensor:
        return self.networks.g(raw)


class RawISP(Defense):
    """RGB -> Bayer RAW -> RGB through a camera pipeline (Zhang et al. 2022), classic or learned; exact gradients.

    Params: ``mode`` (classic | learned), ``noise`` (shot-noise factor of the sensor, 0 = off),
    ``seed`` (noise draws), ``demosaic`` (classic mode: 2x2 | bilinear), ``weights`` (learned mode:
    a weights file; empty = the shipped ``raw-isp-learned.pt``).
    """

    mode = Param("learned", "camera pipeline: Brooks et al.'s classic ISP or the learned CNNs", choices=MODES)
    noise = Param(0.0, "shot-noise factor of the sensor model (0 = off, deterministic)", ge=0, le=MAX_NOISE)
    seed = Param(0, "seed of the sensor-noise draws", ge=0)
    demosaic = Param(
        "2x2",
        "classic mode: one RGGB quad per pixel, or bilinear demosaicing at the image resolution",
        choices=camera.DEMOSAIC_METHODS,
    )
    weights = Param("", "learned mode: a weights file (empty: the shipped raw-isp-learned.pt)")
    gradients = "exact"

    def validate(self) -> None:
        if self.mode == "learned" and self.demosaic != "2x2":
            raise UsageError("demosaic='bilinear' applies to mode='classic' only (G renders the RAW)")
        if self.mode == "classic" and self.weights:
            raise UsageError("weights apply to mode='learned' only")

    def transform(self, model: ImageClassifier) -> nn.Module:
        if model.input_shape is not None and len(model.input_shape) == 3:  # fail before any run
            check_shape(model.input_shape, self.demosaic, what=f"model {model.name!r}'s input")
        if self.mode == "learned":
            return LearnedPipeline(self.noise, self.seed, model.bounds, self.weights or None)
        return ClassicPipeline(self.noise, self.seed, self.demosaic, model.bounds)
