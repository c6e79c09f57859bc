"""Train and eval transform presets for 1-channel radiographs (tensors (1, H, W) in [0, 1]).

Shaped like torchvision's references/classification/presets.py: small classes with
keyword-only arguments, and an augmentation is only added when it is switched on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

# Radiographs are far from ImageNet statistics; these fit [0, 1]-scaled X-rays well enough
# that the first layer sees roughly zero-mean, unit-variance input.
XRAY_MEAN, XRAY_STD = 0.5, 0.25


class ResizePad(nn.Module):
    """Resize so the longer side is `size` (aspect ratio kept), then centre-pad to size x size.

    Radiographs are rarely square; squashing them distorts joint spaces, which is exactly
    what an osteoarthritis reader looks at.
    """

    def __init__(self, size: int, fill: float = 0.0) -> None:
        super().__init__()
        self.size, self.fill = size, fill

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (self.size - nh) // 2, (self.size - nw) // 2
        return F.pad(img, (left, self.size - nw - left, top, self.size - nh - top), value=self.fill)


class TrainPreset:
    def __init__(
        self,
        *,
        image_size: int,
        hflip_prob: float = 0.5,
        rotation_degrees: float = 10.0,
        scale_jitter: float = 0.1,
        intensity_jitter: float = 0.1,
        mean: float = XRAY_MEAN,
        std: float = XRAY_STD,
    ) -> None:
        steps: list[nn.Module] = [ResizePad(image_size)]
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if rotation_degrees > 0 or scale_jitter > 0:
            steps.append(v2.RandomAffine(degrees=rotation_degrees, scale=(1 - scale_jitter, 1 + scale_jitter)))
        if intensity_jitter > 0:
            steps.append(v2.ColorJitter(brightness=intensity_jitter, contrast=intensity_jitter))
        steps.append(v2.Normalize([mean], [std]))
        self.transforms = v2.Compose(steps)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.transforms(img)


class EvalPreset:
    def __init__(self, *, image_size: int, mean: float = XRAY_MEAN, std: float = XRAY_STD) -> None:
        self.transforms = v2.Compose([ResizePad(image_size), v2.Normalize([mean], [std])])

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.transforms(img)
