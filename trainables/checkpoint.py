"""One checkpoint format everywhere: the single run, every trial, the analysis.

A checkpoint is a plain dict of tensors and Python scalars, so it loads with
``torch.load(..., weights_only=True)`` (no pickle of arbitrary objects): the model's name and
kwargs, the TrainConfig as a dict, the epoch, the metrics and history, the optimiser's phase and
state, the normalisation statistics and the data fingerprint.

Beside ``NAME`` lies ``NAME.sha256`` (``sha256sum -c`` reads it): a flipped byte in the tensor
data would still load, so load() checks the digest and refuses a file that does not match it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from trainables.engine import TrainState, make_optimizer
from trainables.fastpath import FastPath, fast_path
from trainables.files import first_line, sha256_file, write_reason
from trainables.models import get_model

FORMAT = "tunefuse-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit; one line for the user."""


def plain(value):
    """Metrics as JSON-able Python scalars (weights_only loading refuses numpy types)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def state_dict(state: TrainState) -> dict:
    cfg = state.cfg
    return {
        "format": FORMAT,
        "model": cfg.model,
        "model_kwargs": cfg.model_args(),
        "config": cfg.to_dict(),
        "epoch": state.epoch,
        "phase": state.phase,
        "metrics": plain(state.history[-1]) if state.history else {},
        "history": plain(state.history),
        "model_state": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "optimizer_state": state.optimizer.state_dict(),
        "normalize": [state.mean, state.std],
        "data_fingerprint": state.fingerprint,
        # the path it trained on (config's "auto" resolved on its device), for the record
        "fast_path": {"precision": state.fast.precision,
                      "channels_last": state.fast.channels_last},
    }


def digest_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save(state: TrainState, path: str | Path) -> Path:
    """Write atomically: a crash or a full disk mid-write never leaves a half checkpoint under
    ``path`` (the previous one stays as it was) and never leaves a temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp_digest = path.with_name(path.name + ".sha256.tmp")
    try:
        torch.save(state_dict(state), tmp)
        tmp_digest.write_text(f"{sha256_file(tmp)}  {path.name}\n")
        os.replace(tmp, path)
        os.replace(tmp_digest, digest_path(path))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        for leftover in (tmp, tmp_digest):
            leftover.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path} ({write_reason(e)}); free "
                              "space or point --workspace / --storage-path at a disk with room"
                              ) from e
    return path


def load(path: str | Path) -> dict:
    path = Path(path)
    digest = digest_path(path)
    if path.exists() and digest.exists() and digest.read_text().split()[:1] != [sha256_file(path)]:
        raise CheckpointError(f"{path}: corrupted (its SHA-256 does not match {digest.name})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as e:  # truncated, corrupted, or a pickle weights_only refuses
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a tunefuse checkpoint (expected format {FORMAT})")
    return ckpt


def _describe(name: str, kwargs: dict) -> str:
    return f"{name}({', '.join(f'{k}={v}' for k, v in sorted(kwargs.items()))})"


def _load_weights(model: torch.nn.Module, ckpt: dict, where: str) -> None:
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()
                      if "size mismatch" in line or "Missing" in line or "Unexpected" in line),
                     str(e).splitlines()[0])
        built = _describe(ckpt["model"], ckpt["model_kwargs"])
        raise CheckpointError(f"{where}: weights of {built} do not fit the model ({first})"
                              ) from None


def model_from(ckpt: dict, where: str = "checkpoint") -> torch.nn.Module:
    """The checkpoint's model, built from its own name and kwargs, weights loaded, in eval mode,
    in the memory format it trained in."""
    model = get_model(ckpt["model"], **ckpt["model_kwargs"])
    _load_weights(model, ckpt, where)
    return fast_path_of(ckpt).prepare(model).eval()


def fast_path_of(ckpt: dict, device: torch.device | str = "cpu") -> FastPath:
    """The path to run the checkpoint's model on ``device``: the precision and memory format it
    trained on, as recorded (a bf16 GPU checkpoint scored on a CPU without native bf16 still
    runs in bf16, so it gives the accuracy it recorded, up to the kernels' rounding). A
    checkpoint from before the record: its config's "auto" resolved for ``device``."""
    recorded = ckpt.get("fast_path")
    if recorded:
        return FastPath(recorded["precision"], bool(recorded["channels_last"]))
    cfg = ckpt.get("config") or {}
    return fast_path(cfg.get("precision", "auto"), cfg.get("memory_format", "auto"),
                     torch.device(device))


def restore(state: TrainState, ckpt: dict, where: str = "checkpoint") -> None:
    """Continue ``state`` from ``ckpt``: weights, optimiser phase and state, epoch, history."""
    want = (state.cfg.model, state.cfg.model_args())
    have = (ckpt["model"], ckpt["model_kwargs"])
    if want != have:
        raise CheckpointError(f"{where}: holds {_describe(*have)}, this run builds "
                              f"{_describe(*want)}")
    if ckpt["data_fingerprint"] != state.fingerprint:
        raise CheckpointError(f"{where}: was trained on data {ckpt['data_fingerprint'][:16]}, "
                              f"this run uses {state.fingerprint[:16]}; use the same data, "
                              "train size and seed")
    _load_weights(state.model, ckpt, where)
    state.phase = ckpt["phase"]
    state.optimizer = make_optimizer(state.model, state.cfg, state.phase)
    state.optimizer.load_state_dict(ckpt["optimizer_state"])
    state.epoch = ckpt["epoch"]
    state.history = list(ckpt["history"])

