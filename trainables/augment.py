"""The seed's two data treatments, done on whole batches of tensors on the training device.

SEED.md, "Tuning": the CNN's training set is expanded offline to three times its size
(originals + horizontal flip then random erasing + Gaussian blur); ResNet and Inception get
online augmentation (random horizontal flip, rotation, crop and erasing), drawn fresh each batch.

Per-sample transforms in a DataLoader cost a Python call per image; here each step is a handful
of batched tensor operations (one ``grid_sample`` for rotation and crop, broadcast masks for
erasing), with no worker processes. All randomness comes from an explicit ``torch.Generator`` on
the data's device, so the same seed gives the same images bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POLICIES = ("none", "flip", "online", "offline")
ROTATE_DEGREES = 10.0  # "about ±10°"
TRANSLATE_PIXELS = 2  # random crop of a 2-pixel zero padding back to 28x28
ERASE_P, ERASE_SCALE, ERASE_RATIO = 0.5, (0.02, 0.33), (0.3, 3.3)  # torchvision's defaults
BLUR_SIGMA = 1.0


def default_policy(model_name: str) -> str:
    """The seed's choice: offline expansion for the CNN, online augmentation for the others."""
    return "offline" if model_name == "cnn" else "online"


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=g, device=g.device) * (high - low) + low


def random_flip(x: torch.Tensor, g: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image of (B, C, H, W) left-right with probability p: exactly a flip."""
    mask = torch.rand(len(x), generator=g, device=g.device) < p
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_erase(x: torch.Tensor, g: torch.Generator, p: float = ERASE_P,
                 scale=ERASE_SCALE, ratio=ERASE_RATIO, value: float = 0.0) -> torch.Tensor:
    """RandomErasing (Zhong et al. 2017) on a (B, C, H, W) batch: with probability p per image,
    a rectangle of area fraction ~U(scale) and log-uniform aspect ratio is set to ``value``."""
    b, _, h, w = x.shape
    area = _uniform(b, *scale, g) * h * w
    aspect = torch.exp(_uniform(b, math.log(ratio[0]), math.log(ratio[1]), g))
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = (torch.rand(b, generator=g, device=g.device) * (h - eh + 1)).floor()
    left = (torch.rand(b, generator=g, device=g.device) * (w - ew + 1)).floor()
    hit = torch.rand(b, generator=g, device=g.device) < p
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & hit[:, None, None])[:, None]
    return x.masked_fill(mask, value)


def random_affine(x: torch.Tensor, g: torch.Generator, degrees: float = ROTATE_DEGREES,
                  translate: int = TRANSLATE_PIXELS) -> torch.Tensor:
    """Rotation uniform in ±degrees and an integer shift of up to ±translate pixels (pad with
    zeros and crop back), both in one bilinear ``grid_sample`` over the batch."""
    b, _, h, w = x.shape
    angle = _uniform(b, -degrees, degrees, g) * (math.pi / 180)
    shift = torch.randint(-translate, translate + 1, (2, b), generator=g, device=g.device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([cos, -sin * h / w, 2 * shift[0] / w], 1),
        torch.stack([sin * w / h, cos, 2 * shift[1] / h], 1),
    ], 1).to(x.dtype)  # (B, 2, 3), normalised coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(x: torch.Tensor, policy: str, g: torch.Generator) -> torch.Tensor:
    """Augment a float (B, 1, H, W) batch with values in [0, 1]; normalisation comes after."""
    if policy in ("none", "offline"):  # offline was done once, up front (expand_offline)
        return x
    if policy == "flip":
        return random_flip(x, g)
    if policy == "online":
        return random_erase(random_affine(random_flip(x, g), g), g)
    raise ValueError(f"unknown augmentation policy {policy!r}; choose one of {POLICIES}")


def gaussian_blur(x: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """3x3 Gaussian blur of a float (B, 1, H, W) batch, edges replicated."""
    t = torch.arange(-1, 2, dtype=x.dtype, device=x.device)
    k1 = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k1 = k1 / k1.sum()
    kernel = (k1[:, None] * k1[None, :])[None, None]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)


def expand_offline(x: torch.Tensor, y: torch.Tensor, g: torch.Generator,
                   chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's offline expansion: uint8 (N, H, W) -> (3N, H, W) = originals, then the
    flipped originals each with a random erasing (p=1), then blurred originals; labels follow."""
    flipped, blurred = [], []
    for i in range(0, len(x), chunk):  # chunks bound the float copies' memory
        f = x[i:i + chunk].unsqueeze(1).float()
        flipped.append(random_erase(f.flip(-1), g, p=1.0))
        blurred.append(gaussian_blur(f))
    def to_uint8(parts):
        return torch.cat(parts).squeeze(1).round_().clamp_(0, 255).to(torch.uint8)
    return torch.cat([x, to_uint8(flipped), to_uint8(blurred)]), y.repeat(3)
