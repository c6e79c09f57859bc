"""Transforms for 1-channel radiographs: `ResizePad` per image where it is decoded (loader workers,
or once into the cache), so batches have one shape; `BatchAugment` on whole batches on the device
(XrayDataModule.batch_transform), far cheaper than in the CPU workers, the bottleneck. Its strengths
have their one default in XrayDataModule's signature (the config schema); here they are required.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Radiographs are far from ImageNet statistics; these fit [0, 1]-scaled X-rays well enough
# that the first layer sees roughly zero-mean, unit-variance input.
XRAY_MEAN, XRAY_STD = 0.5, 0.25


@dataclass
class ResizePad:
    """Resize so the longer side is `size` (aspect ratio kept), then centre-pad to size x size:
    squashing a radiograph distorts joint spaces, which is what an osteoarthritis reader looks at."""

    size: int

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (self.size - nh) // 2, (self.size - nw) // 2
        return F.pad(img, (left, self.size - nw - left, top, self.size - nh - top))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 / uint16 pixels (the cache) to float32 in [0, 1]; float input is returned as it is."""
    return x.float().mul_(1.0 / torch.iinfo(x.dtype).max) if x.dtype in (torch.uint8, torch.uint16) else x


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.empty(n, device=like.device, dtype=like.dtype).uniform_(lo, hi, generator=generator)


@dataclass(kw_only=True)
class BatchAugment:
    """Random flip, rotation + zoom and brightness/contrast for a batch (B, C, H, W) in [0, 1].

    Each image draws its own parameters (as torchvision's per-image transforms do) from `g` (one
    per DDP rank: XrayDataModule._augment_generator), else from the device's global generator.
    """

    hflip_prob: float
    rotation_degrees: float
    scale_jitter: float
    intensity_jitter: float

    def __call__(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        if self.hflip_prob > 0:
            flip = torch.rand(len(x), device=x.device, generator=g) < self.hflip_prob
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.rotation_degrees > 0 or self.scale_jitter > 0:
            x = self._affine(x, g)
        if self.intensity_jitter > 0:
            j = self.intensity_jitter
            brightness = _uniform(len(x), max(0.0, 1 - j), 1 + j, x, g)[:, None, None, None]
            x = (x * brightness).clamp_(0.0, 1.0)
            contrast = _uniform(len(x), max(0.0, 1 - j), 1 + j, x, g)[:, None, None, None]
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x * contrast + mean * (1 - contrast)).clamp_(0.0, 1.0)
        return x

    def _affine(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        angle = _uniform(n, -self.rotation_degrees, self.rotation_degrees, x, g) * (math.pi / 180)
        scale = _uniform(n, 1 - self.scale_jitter, 1 + self.scale_jitter, x, g)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        zero = torch.zeros_like(cos)
        # Output -> input sampling matrix in grid_sample's normalised coordinates; the h/w
        # factors keep the rotation rigid on non-square images.
        theta = torch.stack([torch.stack([cos, sin * (h / w), zero], 1), torch.stack([-sin * (w / h), cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
