"""MoCo-v2 view augmentations on batches of normalised band stacks, drawn from one generator.

torchvision's PIL transforms assume 8-bit RGB; these work on (B, C, H, W) float tensors of
normalised bands (any C), each sample drawing its own parameters:
- random resized crop (area fraction from `scale`, aspect ratio 3/4-4/3, bilinear resize);
- colour jitter with probability p: brightness (×), contrast (about the sample's mean) and
  saturation (about the band mean) factors in [1 − j, 1 + j], applied to the values shifted so
  the band minimum of the sample is 0 (so "×" darkens as on an image); hue (±h of a turn) only
  for three-band stacks, as a rotation of the chroma about the grey axis;
- grayscale with probability p: every band replaced by the mean of the bands;
- Gaussian blur with probability p, σ uniform in `sigma` (kernel 2⌈3σ⌉ + 1);
- horizontal flip with probability 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_resized_crop(
    x: torch.Tensor, size: int, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """One crop per sample, resized to size × size (torchvision's sampling, 10 tries)."""
    b, _, h, w = x.shape
    area = h * w
    boxes = []
    for _ in range(b):
        chosen = None
        for _ in range(10):
            target = area * float(_uniform(1, scale[0], scale[1], generator))
            ratio = math.exp(float(_uniform(1, math.log(3 / 4), math.log(4 / 3), generator)))
            cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                chosen = (left, top, left + cw, top + ch)
                break
        boxes.append(chosen or (0, 0, w, h))  # fallback: the whole patch
    rois = torch.tensor([[i, *box] for i, box in enumerate(boxes)], dtype=x.dtype)
    return roi_align(x, rois.to(x.device), (size, size), spatial_scale=1.0, aligned=True)


def colour_jitter(
    x: torch.Tensor, strength: tuple[float, float, float, float], p: float, g: torch.Generator
) -> torch.Tensor:
    b, c = x.shape[:2]
    brightness, contrast, saturation, hue = strength
    apply = (torch.rand(b, generator=g) < p).view(b, 1, 1, 1)
    floor = x.amin(dim=(2, 3), keepdim=True)
    y = x - floor
    y = y * _uniform(b, 1 - brightness, 1 + brightness, g).view(b, 1, 1, 1)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * _uniform(b, 1 - contrast, 1 + contrast, g).view(b, 1, 1, 1) + mean
    grey = y.mean(dim=1, keepdim=True)
    y = (y - grey) * _uniform(b, 1 - saturation, 1 + saturation, g).view(b, 1, 1, 1) + grey
    if c == 3 and hue:
        angle = _uniform(b, -hue, hue, g) * 2 * math.pi
        y = _rotate_hue(y, angle)
    return torch.where(apply, y + floor, x)


def _rotate_hue(y: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate RGB about the grey axis (1, 1, 1)/√3 by `angle` (Rodrigues' formula)."""
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    axis = torch.full((3,), 1 / math.sqrt(3))
    cross = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    outer = torch.outer(axis, axis)
    rotation = cos * torch.eye(3) + sin * cross + (1 - cos) * outer  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", rotation.to(y.dtype), y)


def grayscale(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    apply = (torch.rand(x.shape[0], generator=g) < p).view(-1, 1, 1, 1)
    return torch.where(apply, x.mean(dim=1, keepdim=True).expand_as(x), x)


def gaussian_blur(
    x: torch.Tensor, sigma: tuple[float, float], p: float, g: torch.Generator
) -> torch.Tensor:
    b, c, h, w = x.shape
    apply = torch.rand(b, generator=g) < p
    sigmas = _uniform(b, sigma[0], sigma[1], g)
    out = x.clone()
    for i in torch.nonzero(apply).flatten().tolist():
        s = float(sigmas[i])
        radius = min(math.ceil(3 * s), (min(h, w) - 1) // 2)
        if radius < 1:
            continue
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        kernel = torch.exp(-(t**2) / (2 * s * s))
        kernel = (kernel / kernel.sum()).to(x.device)
        img = F.pad(x[i : i + 1], (radius, radius, radius, radius), mode="reflect")
        img = F.conv2d(img, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        img = F.conv2d(img, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        out[i] = img[0]
    return out


def hflip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    apply = (torch.rand(x.shape[0], generator=g) < 0.5).view(-1, 1, 1, 1)
    return torch.where(apply, x.flip(3), x)


class MoCoAugment:
    """MoCo-v2's view pipeline with the crop and blur scaled to the patch (224 px reference)."""

    def __init__(self, method_config, patch_reference: int = 224) -> None:
        self.cfg = method_config
        self.reference = patch_reference

    def crop_size(self, patch: int) -> int:
        return max(8, round(patch * self.cfg.crop_fraction))

    def __call__(self, x: torch.Tensor, g: torch.Generator, jitter: bool = True) -> torch.Tensor:
        size = self.crop_size(min(x.shape[-2:]))
        y = random_resized_crop(x, size, tuple(self.cfg.crop_scale), g)
        if jitter:
            y = colour_jitter(y, tuple(self.cfg.jitter), self.cfg.jitter_p, g)
            y = grayscale(y, self.cfg.grayscale_p, g)
            factor = size / self.reference
            y = gaussian_blur(y, (0.1 * factor, 2.0 * factor), self.cfg.blur_p, g)
            y = hflip(y, g)
        return y.contiguous()
