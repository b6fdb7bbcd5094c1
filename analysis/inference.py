"""Softmax probabilities of a checkpoint on uint8 images: batched, on the best device.

    probs = predict_probs(checkpoint.load(path), images)          # (N, NUM_CLASSES) float64
    val, test = cached_probs(cache_dir, path, split)             # computed once per checkpoint
    probs = predict_probs(ckpt, images, tta="flip")  # the mean over the images and their mirrors

The checkpoint carries its model, weights and normalisation (trainables/checkpoint.py), so the
same function serves the report, the shipped ensemble and ``analysis.predict``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainables import checkpoint
from trainables.data import NUM_CLASSES
from trainables.engine import resolve_device
from trainables.files import sha256_file

TTA = ("none", "flip")  # test-time augmentation: none, or the mean with the left-right mirror


def predict_probs(ckpt: dict, images, device: str = "auto", batch_size: int = 1024,
                  model: torch.nn.Module | None = None, tta: str = "none") -> np.ndarray:
    """(N, 28, 28) uint8 images (numpy or torch) -> (N, C) softmax probabilities (float64).

    ``tta="flip"``: the mean of the softmax on each image and on its left-right mirror (the
    flip the training augmentations make), which the report's ``--tta flip`` chooses."""
    if tta not in TTA:
        raise ValueError(f"unknown test-time augmentation {tta!r}: use one of {', '.join(TTA)}")
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dtype != torch.uint8 or x.dim() != 3:
        raise ValueError(f"expected (N, H, W) uint8 images, got {tuple(x.shape)} {x.dtype}")
    if tta == "flip":
        if model is None:
            model = checkpoint.model_from(ckpt)
        return (predict_probs(ckpt, x, device, batch_size, model) +
                predict_probs(ckpt, torch.flip(x, dims=[2]), device, batch_size, model)) / 2
    dev = resolve_device(device)
    if model is None:
        model = checkpoint.model_from(ckpt)
    fast = checkpoint.fast_path_of(ckpt, dev)  # the engine's path, as evaluate() runs it
    model = fast.prepare(model.to(dev)).eval()
    mean, std = ckpt["normalize"]
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev).unsqueeze(1).float().div_(255)
            if fast.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            xb = (xb - mean) / std
            with fast.autocast(dev):
                logits = model(xb)
            out.append(logits.float().softmax(1).double().cpu())
    if not out:
        return np.zeros((0, NUM_CLASSES))
    return torch.cat(out).numpy()


def cached_probs(cache_dir: str | Path, checkpoint_path: str | Path, split,
                 device: str = "auto", tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Validation and test probabilities of one checkpoint, computed once.

    Keyed by the checkpoint file's SHA-256, the split's fingerprint and the test-time
    augmentation, so a changed file, another split or another TTA never reuses stale numbers."""
    key = f"{sha256_file(checkpoint_path)[:24]}-{split.fingerprint[:16]}"
    key += "" if tta == "none" else f"-{tta}"
    path = Path(cache_dir) / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:  # numbers only, never objects
                return z["val"], z["test"]
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
    ckpt = checkpoint.load(checkpoint_path)
    model = checkpoint.model_from(ckpt, str(checkpoint_path))
    val = predict_probs(ckpt, split.x_val, device, model=model, tta=tta)
    test = predict_probs(ckpt, split.x_test, device, model=model, tta=tta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, val=val, test=test)
    tmp.replace(path)
    return val, test
