"""Security defaults: nothing is unpickled from files, servers bind to 127.0.0.1 unless asked
otherwise, Ray's token authentication is left on. (Credentials in tracking URIs:
tests/test_mlflow_server.py; the live dashboard's 401 without a token: tests/test_pipeline.py.)"""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import checkpoint

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("search", "trainables", "analysis", "bench")
                 for p in (ROOT / d).rglob("*.py"))


def calls(name: str):
    """Every call of ``<module>.name(...)`` in the project's code, with its file and line."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == name and isinstance(node.func.value, ast.Name):
                yield node.func.value.id, node, f"{path.relative_to(ROOT)}:{node.lineno}"


def keyword(node: ast.Call, name: str):
    kw = next((k for k in node.keywords if k.arg == name), None)
    return None if kw is None or not isinstance(kw.value, ast.Constant) else kw.value.value


def test_every_load_in_the_code_refuses_pickles():
    loads = [(mod, node, where) for mod, node, where in calls("load") if mod in ("torch", "np")]
    assert loads  # the check below looks at something
    for mod, node, where in loads:
        if mod == "torch":
            assert keyword(node, "weights_only") is True, where
        else:
            assert keyword(node, "allow_pickle") is False, where
    assert not [where for mod, _, where in calls("loads") if mod == "pickle"]
    assert not [where for mod, _, where in calls("load") if mod == "pickle"]


class Payload:
    """What a malicious checkpoint would carry: unpickling it runs code."""

    ran = False

    def __reduce__(self):
        return (Payload._run, ())

    @staticmethod
    def _run():
        Payload.ran = True
        return {}


def test_a_checkpoint_that_holds_a_pickle_is_refused_unrun(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": checkpoint.FORMAT, "model": "cnn", "evil": Payload()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path)
    assert not Payload.ran
    with open(path, "wb") as f:  # a plain pickle under the checkpoint's name
        pickle.dump(Payload(), f)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(path)
    assert not Payload.ran


def test_a_cached_array_that_holds_objects_is_recomputed_not_unpickled(tmp_path, monkeypatch):
    from analysis import inference

    class Split:
        fingerprint = "f" * 64
        x_val = x_test = torch.zeros(2, 28, 28, dtype=torch.uint8)

    ckpt = tmp_path / "member.pt"
    ckpt.write_bytes(b"weights")
    key = f"{inference.file_digest(ckpt)[:24]}-{Split.fingerprint[:16]}"
    (tmp_path / "cache").mkdir()
    np.savez(tmp_path / "cache" / f"{key}.npz", val=np.array([Payload()], dtype=object),
             test=np.zeros(1))
    computed = []
    monkeypatch.setattr(inference.checkpoint, "load", lambda p: computed.append(p) or {})
    monkeypatch.setattr(inference.checkpoint, "model_from", lambda c, where: None)
    monkeypatch.setattr(inference, "predict_probs",
                        lambda c, x, device, model: np.full((len(x), 10), 0.1))
    val, _ = inference.cached_probs(tmp_path / "cache", ckpt, Split)
    assert computed == [ckpt] and val.shape == (2, 10)  # recomputed from the checkpoint
    assert not Payload.ran


def test_servers_bind_to_loopback_and_ray_keeps_its_token():
    source = (ROOT / "search" / "driver.py").read_text()
    assert 'dashboard_host="127.0.0.1"' in source
    for path in SOURCES:  # token authentication is never turned off, nothing binds everywhere
        text = path.read_text()
        assert not re.search(r"RAY_AUTH_MODE\W{1,6}disabled", text), path
        assert '"0.0.0.0"' not in text, path
    readme = (ROOT / "README.md").read_text()
    for line in readme.splitlines():
        if "mlflow ui" in line or "mlflow server" in line:
            assert "--host 0.0.0.0" not in line, line
