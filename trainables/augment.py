"""The seed's two data treatments, done on whole batches of tensors on the training device.

docs/seed.md, "Tuning": the CNN's training set is expanded offline to three times its size
(originals + horizontal flip then random erasing + Gaussian blur); ResNet and Inception get
online augmentation (random horizontal flip, rotation, crop and erasing), drawn fresh each batch.
Beside them, ``shift``: a flip and a random crop of the 2-pixel zero padding, no rotation or
erasing (the CIFAR-10 augmentation of He et al. 2016, section 4.2, there with 4 pixels).

Per-sample transforms in a DataLoader cost a Python call per image; here each step is a handful
of batched tensor operations (one ``grid_sample`` for rotation and crop, broadcast masks for
erasing), with no worker processes. All randomness comes from an explicit ``torch.Generator`` on
the data's device, so the same seed gives the same images bit for bit.

    python bench/augment.py      # the speed-up over per-sample torchvision, measured side by side
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from trainables.models import card

POLICIES = ("none", "flip", "shift", "online", "offline")
FLIP_P = 0.5
ROTATE_DEGREES = 10.0  # rotation uniform in ±10°
TRANSLATE_PIXELS = 2  # random crop of a 2-pixel zero padding back to 28x28 = shift of ±2 pixels
ERASE_P, ERASE_SCALE, ERASE_RATIO = 0.5, (0.02, 0.33), (0.3, 3.3)  # torchvision's defaults
BLUR_SIGMA = 1.0  # 3x3 kernel; the seed names no sigma, 1.0 is a visible but mild blur
BLUR_CHUNK = 8192  # images per float copy in expand_offline: bounds memory, not speed


def default_policy(model_name: str) -> str:
    """What the model trains with when its augmentation is "auto": its ModelCard says (the
    seed's choice: offline expansion for the CNN, online augmentation for the others)."""
    return card(model_name).augment


def random_flip(x: torch.Tensor, g: torch.Generator, p: float = FLIP_P) -> torch.Tensor:
    """Flip each image of (B, C, H, W) left-right with probability p: exactly a flip."""
    mask = torch.rand(len(x), generator=g, device=g.device) < p
    # where() copies pixels, so a flipped image is bit-identical to x.flip(-1)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_erase(x: torch.Tensor, g: torch.Generator, p: float = ERASE_P,
                 scale: tuple[float, float] = ERASE_SCALE,
                 ratio: tuple[float, float] = ERASE_RATIO, value: float = 0.0) -> torch.Tensor:
    """RandomErasing (Zhong et al. 2017; torchvision's semantics) on a (B, C, H, W) batch of any
    dtype: with probability p per image, a rectangle of area fraction ~U(scale), aspect ratio
    log-uniform in ``ratio`` and uniform position is set to ``value``."""
    b, _, h, w = x.shape
    u = torch.rand(5, b, generator=g, device=g.device)  # one draw for all five choices
    area = (u[0] * (scale[1] - scale[0]) + scale[0]) * (h * w)
    aspect = torch.exp(u[1] * (math.log(ratio[1]) - math.log(ratio[0])) + math.log(ratio[0]))
    # torchvision redraws a box that does not fit (10 tries, then no erasing); clamping the
    # height and deriving the width from the area keeps the area and needs no retry loop
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = (area / eh).round().clamp(1, w)
    top = (u[2] * (h - eh + 1)).floor()
    left = (u[3] * (w - ew + 1)).floor()
    hit = u[4] < p
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None]) & hit[:, None]  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (B, W)
    # the rectangle is an outer product of a row band and a column band; x - x * rect with a
    # 0/1 rect is exact and on CPU several times faster than masked_fill with a bool mask
    rect = in_rows.to(x.dtype)[:, None, :, None] * in_cols.to(x.dtype)[:, None, None, :]
    out = torch.addcmul(x, x, rect, value=-1)
    return out.add_(rect, alpha=value) if value else out


def random_shift(x: torch.Tensor, g: torch.Generator,
                 pixels: int = TRANSLATE_PIXELS) -> torch.Tensor:
    """Shift each image of (B, C, H, W) by an integer offset uniform in ±pixels per axis, zero
    fill: pad-and-crop, as one gather (exact, any dtype; no interpolation)."""
    b, c, h, w = x.shape
    off = (torch.rand(2, b, generator=g, device=g.device) * (2 * pixels + 1)).floor().long()
    padded = F.pad(x, (pixels, pixels, pixels, pixels))
    rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B,1,H,1)
    cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B,1,1,W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


@functools.lru_cache(maxsize=16)
def _grid_basis(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(6, h*w*2) matrix m with theta.reshape(B, 6) @ m == affine_grid(theta), align_corners=False.

    affine_grid runs a batched matmul of B tiny products, which on CPU took ~40% of the online
    policy's time; folding the 2x2 block structure into m makes it one GEMM whose output already
    has grid_sample's (B, h, w, 2) layout (same values to ~1e-7). Cached: it depends on the
    shape only, and building it per batch cost as much as the product."""
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1  # pixel centres
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    xx, yy = xs.expand(h, w), ys[:, None].expand(h, w)
    base = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(h * w, 3)  # (x, y, 1)
    # m[(k, j), (p, l)] = base[p, j] * (k == l): output coordinate l of pixel p from theta row k
    eye = torch.eye(2, device=device, dtype=dtype)
    return (eye[:, None, None, :] * base.T[None, :, :, None]).reshape(6, h * w * 2)


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, h, w), align_corners=False)`` as one matrix product."""
    return (theta.reshape(-1, 6) @ _grid_basis(h, w, theta.device, theta.dtype)).reshape(
        -1, h, w, 2)


def random_affine(x: torch.Tensor, g: torch.Generator, degrees: float = ROTATE_DEGREES,
                  translate: int = TRANSLATE_PIXELS) -> torch.Tensor:
    """Rotation uniform in ±degrees and an integer shift of up to ±translate pixels (pad with
    zeros and crop back), both in one bilinear ``grid_sample`` over the batch."""
    b, _, h, w = x.shape
    u = torch.rand(3, b, generator=g, device=g.device)
    angle = (u[0] * 2 - 1) * (degrees * math.pi / 180)
    shift = (u[1:] * (2 * translate + 1)).floor() - translate  # integers, uniform in ±translate
    cos, sin = torch.cos(angle), torch.sin(angle)
    # theta maps output to input coordinates, normalised to [-1, 1] per axis; the h/w factors
    # keep the rotation a rotation on non-square images, 2/w turns pixels into that unit
    theta = torch.stack([cos, -sin * h / w, 2 * shift[0] / w,
                         sin * w / h, cos, 2 * shift[1] / h], 1).to(x.dtype)
    grid = _affine_grid(theta, h, w)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(x: torch.Tensor, policy: str, g: torch.Generator, *,
                  flip_p: float = FLIP_P, degrees: float = ROTATE_DEGREES,
                  translate: int = TRANSLATE_PIXELS, erase_p: float = ERASE_P) -> torch.Tensor:
    """Augment a float (B, 1, H, W) batch with values in [0, 1]; normalisation comes after."""
    if policy in ("none", "offline"):  # offline was done once, up front (expand_offline)
        return x
    if policy == "flip":
        return random_flip(x, g, flip_p)
    if policy == "shift":
        return random_shift(random_flip(x, g, flip_p), g, translate)
    if policy == "online":
        x = random_flip(x, g, flip_p)
        if degrees or translate:  # an identity grid_sample is not bit-exact: skip it
            # bilinear weights sum to 1 only up to rounding; the clamp guarantees [0, 1]
            x = random_affine(x, g, degrees, translate).clamp_(0, 1)
        return random_erase(x, g, p=erase_p)
    raise ValueError(f"unknown augmentation policy {policy!r}; choose one of {POLICIES}")


def gaussian_blur(x: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """3x3 Gaussian blur of a float (B, C, H, W) batch, edges replicated.

    The kernel is separable, so it runs as two 3-tap passes over shifted slices: on CPU a
    one-channel conv2d was ~8x slower."""
    k = [math.exp(-(d * d) / (2 * sigma * sigma)) for d in (1, 0)]
    side, mid = k[0] / (2 * k[0] + k[1]), k[1] / (2 * k[0] + k[1])
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    p = torch.add(p[..., :-2], p[..., 2:]).mul_(side).add_(p[..., 1:-1], alpha=mid)
    return torch.add(p[..., :-2, :], p[..., 2:, :]).mul_(side).add_(p[..., 1:-1, :], alpha=mid)


def expand_offline(x: torch.Tensor, y: torch.Tensor,
                   g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's offline expansion: uint8 (N, H, W) -> (3N, H, W) = originals, then the
    flipped originals each with a random erasing (p=1), then blurred originals; labels follow."""
    # erasing with 0 is exact on uint8, so the flipped copies never go through float
    erased = random_erase(x.flip(-1).unsqueeze(1), g, p=1.0).squeeze(1)
    blurred = torch.empty_like(x)
    for i in range(0, len(x), BLUR_CHUNK):  # chunks bound the float copies' memory
        f = x[i:i + BLUR_CHUNK].unsqueeze(1).float()
        blurred[i:i + BLUR_CHUNK] = gaussian_blur(f).squeeze(1).round_().clamp_(0, 255)
    return torch.cat([x, erased, blurred]), torch.cat([y, y, y])
