"""The shipped model: fused member checkpoints as one MLflow pyfunc, logged and registered.

    uri, version = log_ensemble(run_id, [ckpt_a, ckpt_b], weights=[0.6, 0.4],
                                temperatures=[1.3, 0.9], registered_name="tunefuse-ensemble",
                                tracking_uri="sqlite:///mlflow.db")
    mlflow models serve -m models:/tunefuse-ensemble/1 --env-manager local --port 5001
    curl -d '{"inputs": [[[0, ...28 values...], ...28 rows...]]}' \
         -H 'Content-Type: application/json' localhost:5001/invocations

The model takes (N, 28, 28) uint8 images and answers a table with ``label`` (the arg-max) and
``p0``..``p9`` (the fused probabilities). Each member's softmax comes from
``analysis.inference.predict_probs``, is temperature-scaled when its T is not 1 and fused with
``analysis.fusion.fuse``: the pyfunc and the report call the same ``fused_probs``, so a served
answer equals the in-process one. The member checkpoints travel as artifacts and load with
``torch.load(..., weights_only=True)``; the ``trainables`` and ``analysis`` packages travel as
code, so the model loads where this repository is not installed.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from mlflow.utils import logging_utils

from analysis.fusion import apply_temperature, fuse, normalise
from analysis.inference import TTA, predict_probs
from trainables import checkpoint
from trainables.data import CLASSES, IMAGE_SHAPE, NUM_CLASSES
from trainables.files import sha256_file

ARTIFACT_NAME = "ensemble"  # the model's name under its run
FUSION_ARTIFACT = "fusion"
PROB_COLUMNS = tuple(f"p{c}" for c in range(NUM_CLASSES))
ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = (str(ROOT / "trainables"), str(ROOT / "analysis"))
# What the model needs at load time; pinned to this environment so that MLflow does not infer
# (slowly, and by importing the model) and a serving environment gets what was tested.
REQUIREMENTS = ("torch", "numpy", "pandas", "mlflow")


def member_key(i: int) -> str:
    return f"member{i}"


def signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *IMAGE_SHAPE))]),
        outputs=Schema([ColSpec("long", "label"),
                        *(ColSpec("double", name) for name in PROB_COLUMNS)]))


def pip_requirements() -> list[str]:
    # "2.14.1+cpu" -> "2.14.1": the local label names a wheel index, not a release
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def as_images(model_input) -> np.ndarray:
    """(N, 28, 28) uint8 from a numpy array (N, 28, 28) or (N, 784), a DataFrame of 784 pixel
    columns, or nested lists. Values must be whole numbers in 0..255."""
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.to_numpy()
    x = np.asarray(model_input)
    h, w = IMAGE_SHAPE
    if x.ndim == 2 and x.shape[1] == h * w:
        x = x.reshape(-1, h, w)
    elif x.ndim == 2 and x.shape == IMAGE_SHAPE:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"expected images of shape (N, {h}, {w}) or (N, {h * w}), "
                         f"got {x.shape}")
    if x.dtype == np.uint8:
        return x if x.flags.writeable else x.copy()  # torch warns on read-only arrays
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"expected numeric pixel values, got dtype {x.dtype}")
    if x.size and (not np.all(np.isfinite(x)) or (x < 0).any() or (x > 255).any()
                   or (x != np.round(x)).any()):
        raise ValueError("pixel values must be whole numbers in 0..255")
    return x.astype(np.uint8)


def _temperatures(temperatures, k: int) -> list[float]:
    if temperatures is None:
        return [1.0] * k
    if np.isscalar(temperatures):
        temperatures = [temperatures] * k
    ts = [float(t) for t in temperatures]
    if len(ts) != k:
        raise ValueError(f"{len(ts)} temperatures for {k} members")
    if not all(np.isfinite(t) and t > 0 for t in ts):
        raise ValueError(f"temperatures must be positive and finite, got {ts}")
    return ts


def fused_probs(ckpts, weights, temperatures, images, models=None,
                device: str = "auto", fused_temperature: float = 1.0,
                tta: str = "none") -> np.ndarray:
    """The ensemble's (N, C) probabilities on ``images``: each member's softmax, temperature
    -scaled when its T != 1, fused with the normalised ``weights``, then the fused output
    scaled by ``fused_temperature`` (which never changes a label).

    ``ckpts``: checkpoint dicts or paths; ``temperatures``: a list, one number, or None (all 1);
    ``models``: the members' built models, to skip rebuilding them (the pyfunc keeps them);
    ``tta``: each member's test-time augmentation (analysis.inference.predict_probs)."""
    ckpts = [c if isinstance(c, dict) else checkpoint.load(c) for c in ckpts]
    k = len(ckpts)
    ts = _temperatures(temperatures, k)
    w = normalise(weights)
    if len(w) != k:
        raise ValueError(f"{len(w)} weights for {k} members")
    x = as_images(images)
    models = models or [None] * k
    members = []
    for ckpt, model, t in zip(ckpts, models, ts, strict=True):
        p = predict_probs(ckpt, x, device=device, model=model, tta=tta)
        members.append(p if t == 1.0 else apply_temperature(p, t))
    (t_fused,) = _temperatures([fused_temperature], 1)
    fused = fuse(members, w)
    return fused if t_fused == 1.0 else apply_temperature(fused, t_fused)


def to_frame(probs: np.ndarray) -> pd.DataFrame:
    """The model's answer: ``label`` (int64 arg-max) then ``p0``..``p9``."""
    frame = pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=list(PROB_COLUMNS))
    frame.insert(0, "label", np.asarray(probs).argmax(1).astype(np.int64))
    return frame


class FusedEnsemble(mlflow.pyfunc.PythonModel):
    """The pyfunc: members and fusion settings come from the artifacts at load time, so the
    pickled object itself is empty."""

    # The explicit tensor signature validates the input; without this MLflow 3 wraps
    # ``predict`` for type-hint validation and warns, at every import, that it has no hints.
    _skip_type_hint_validation = True

    def load_context(self, context):
        with open(context.artifacts[FUSION_ARTIFACT]) as f:
            self.fusion = json.load(f)
        k = len(self.fusion["weights"])
        self.ckpts = [checkpoint.load(context.artifacts[member_key(i)]) for i in range(k)]
        self.models = [checkpoint.model_from(c, member_key(i)) for i, c in enumerate(self.ckpts)]
        self.classes = list(self.fusion.get("classes", CLASSES))

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        probs = fused_probs(self.ckpts, self.fusion["weights"],
                            self.fusion.get("temperatures"), model_input, models=self.models,
                            fused_temperature=self.fusion.get("fused_temperature", 1.0),
                            tta=self.fusion.get("tta", "none"))
        return to_frame(probs)


def log_ensemble(run_id: str, checkpoint_paths, weights, temperatures, registered_name: str,
                 tracking_uri: str, fused_temperature: float = 1.0,
                 tta: str = "none") -> tuple[str, int]:
    """Log the fused model under the run ``run_id``, register it as ``registered_name``, and
    return (``models:/NAME/VERSION``, version). ``fused_temperature`` scales the fused output
    (a model logged without it reads 1); ``tta`` is the members' test-time augmentation, as
    the report scored them (a model logged without it reads none)."""
    if tta not in TTA:
        raise ValueError(f"unknown test-time augmentation {tta!r}: use one of {', '.join(TTA)}")
    paths = [Path(p) for p in checkpoint_paths]
    if not paths:
        raise ValueError("an ensemble needs at least one member checkpoint")
    ckpts = [checkpoint.load(p) for p in paths]  # refuse a bad member before logging anything
    for p, c in zip(paths, ckpts, strict=True):
        checkpoint.model_from(c, str(p))
    w = normalise(weights)
    if len(w) != len(paths):
        raise ValueError(f"{len(w)} weights for {len(paths)} members")
    fusion = {
        "weights": [float(v) for v in w],
        "temperatures": _temperatures(temperatures, len(paths)),
        "fused_temperature": _temperatures([fused_temperature], 1)[0],
        "tta": tta,
        "classes": list(CLASSES),
        "members": [{"source": str(p), "sha256": sha256_file(p), "model": c["model"],
                     "model_kwargs": c["model_kwargs"], "metrics": c.get("metrics", {})}
                    for p, c in zip(paths, ckpts, strict=True)],
    }
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fusion_path = Path(tmp) / "fusion.json"
            fusion_path.write_text(json.dumps(fusion, indent=2))
            artifacts = {member_key(i): str(p) for i, p in enumerate(paths)}
            artifacts[FUSION_ARTIFACT] = str(fusion_path)
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                info = _log(artifacts, registered_name)
            else:
                with mlflow.start_run(run_id=run_id, nested=active is not None):
                    info = _log(artifacts, registered_name)
    finally:
        mlflow.set_tracking_uri(previous)
    version = int(info.registered_model_version)
    return f"models:/{registered_name}/{version}", version


@contextlib.contextmanager
def mlflow_prints(shown: bool) -> Iterator[None]:
    """MLflow prints "Successfully registered model" and "Created version" itself, past its
    loggers: shown in the block only when ``shown`` (a report says which model and version
    itself, so only its -v shows them)."""
    stream = logging_utils.MLFLOW_LOGGING_STREAM
    was = stream.enabled
    stream.enabled = was and shown
    try:
        yield
    finally:
        stream.enabled = was


def _log(artifacts: dict[str, str], registered_name: str):
    return mlflow.pyfunc.log_model(
        name=ARTIFACT_NAME, python_model=FusedEnsemble(), artifacts=artifacts,
        code_paths=list(CODE_PATHS), signature=signature(), pip_requirements=pip_requirements(),
        input_example=np.zeros((1, *IMAGE_SHAPE), np.uint8),
        registered_model_name=registered_name)
