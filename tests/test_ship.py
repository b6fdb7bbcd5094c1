"""The shipped model: the fused pyfunc, its registry entry, a served endpoint, the predict CLI.

Two tiny real checkpoints (the seed CNN and a width-4 ResNet18, one epoch on 450 real images) are
fused, logged into a sqlite MLflow store under a temporary folder and registered; everything
below loads that one registered model.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import free_port, need_real_data
from PIL import Image

from analysis import predict
from analysis.ensemble import PROB_COLUMNS, fused_probs, log_ensemble
from analysis.images import read_images
from analysis.inference import predict_probs
from analysis.pngs import FIX_PNG, conversion_line
from trainables import checkpoint, data
from trainables.config import TrainConfig
from trainables.engine import fit
from trainables.idx import write_idx

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
NAME = "tunefuse-ship-test"
WEIGHTS = [0.7, 0.3]
TEMPERATURES = [1.5, 1.0]  # the first member is softened, the second left as it is
FUSED_T = 0.8  # the fused output's own temperature (sharpens)
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@pytest.fixture(scope="module")
def split():
    need_real_data()
    return data.load_split(data.SYSTEM_DIR, train_size=500, seed=0)


@pytest.fixture(scope="module")
def members(split, tmp_path_factory):
    """Two real checkpoints of different architectures."""
    out = tmp_path_factory.mktemp("members")
    paths = []
    threads = torch.get_num_threads()
    try:  # one thread: tiny batches gain nothing from two, and lose 10x on a busy machine
        for name, kwargs in [("cnn", {}), ("resnet18", {"width": 4})]:
            cfg = TrainConfig(model=name, model_kwargs=kwargs, epochs=1, warmup_epochs=1,
                              augment="none", batch_size=64, device="cpu", seed=1,
                              num_threads=1)
            paths.append(checkpoint.save(fit(cfg, split), out / f"{name}.pt"))
    finally:
        torch.set_num_threads(threads)
    return paths


@pytest.fixture(scope="module")
def images(split):
    """20 test images and their labels, the input of every format below."""
    return split.x_test[:20].numpy(), split.y_test[:20].numpy()


@pytest.fixture(scope="module")
def expected(members, images):
    return fused_probs(members, WEIGHTS, TEMPERATURES, images[0], fused_temperature=FUSED_T)


@pytest.fixture(scope="module")
def shipped(members, tmp_path_factory):
    """The fusion logged under a real run of a sqlite store and registered as version 1."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("ship", artifact_location=(root / "artifacts")
                                              .as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_param("members", len(members))
        model_uri, version = log_ensemble(run.info.run_id, members, WEIGHTS, TEMPERATURES,
                                          NAME, uri, fused_temperature=FUSED_T)
        mlflow.set_tracking_uri(uri)  # log_ensemble restores the caller's URI
        yield {"uri": uri, "model_uri": model_uri, "version": version, "root": root,
               "run_id": run.info.run_id}
    finally:
        mlflow.set_tracking_uri(previous)


# --- the pyfunc -------------------------------------------------------------------------------

def test_registered_model_equals_in_process_fusion(shipped, members, images, expected):
    assert shipped["model_uri"] == f"models:/{NAME}/1" and shipped["version"] == 1
    model = mlflow.pyfunc.load_model(shipped["model_uri"])
    frame = model.predict(images[0])
    assert list(frame.columns) == ["label", *PROB_COLUMNS]
    assert frame["label"].dtype == np.int64
    probs = frame[list(PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert (frame["label"].to_numpy() == expected.argmax(1)).all()
    # the fusion is the documented one: member softmax, temperature, weighted mean, then the
    # fused output's temperature
    ckpts = [checkpoint.load(p) for p in members]
    a, b = (predict_probs(c, images[0]) for c in ckpts)
    soft = np.exp(np.log(a) / 1.5)
    soft /= soft.sum(1, keepdims=True)
    mean = 0.7 * soft + 0.3 * b
    sharp = np.exp(np.log(mean) / FUSED_T)
    np.testing.assert_allclose(expected, sharp / sharp.sum(1, keepdims=True), atol=1e-9)
    assert (expected.argmax(1) == mean.argmax(1)).all()
    # a DataFrame of 784 pixel columns and nested lists give the same answer
    inner = model.unwrap_python_model()
    flat = pd.DataFrame(images[0].reshape(-1, 784),
                        columns=[f"pixel{i}" for i in range(1, 785)])
    for other in (flat, images[0].tolist()):
        got = inner.predict(None, other)
        np.testing.assert_allclose(got[list(PROB_COLUMNS)].to_numpy(), expected, atol=1e-9)


def test_registry_entry_signature_and_code(shipped, members):
    client = mlflow.MlflowClient(shipped["uri"])
    version = client.get_model_version(NAME, "1")
    assert version.run_id == shipped["run_id"]
    info = mlflow.models.get_model_info(shipped["model_uri"])
    inputs = info.signature.inputs.inputs[0]
    assert inputs.type == np.dtype(np.uint8) and inputs.shape == (-1, 28, 28)
    assert info.signature.outputs.input_names() == ["label", *PROB_COLUMNS]
    local = Path(mlflow.artifacts.download_artifacts(shipped["model_uri"]))
    assert (local / "code" / "trainables" / "checkpoint.py").is_file()
    assert (local / "code" / "analysis" / "ensemble.py").is_file()
    fusion = json.loads(next(local.rglob("fusion.json")).read_text())
    assert fusion["weights"] == pytest.approx(WEIGHTS) and fusion["temperatures"] == TEMPERATURES
    assert len(fusion["classes"]) == 10 and [m["model"] for m in fusion["members"]] == \
        ["cnn", "resnet18"]
    reqs = (local / "requirements.txt").read_text()
    assert all(f"{p}==" in reqs for p in ("torch", "numpy", "pandas", "mlflow"))


def test_fused_probs_basics(members, images):
    x = images[0]
    one = fused_probs(members[:1], [5.0], None, x)
    np.testing.assert_array_equal(one, predict_probs(checkpoint.load(members[0]), x))
    with pytest.raises(ValueError, match="2 weights for 1 members"):
        fused_probs(members[:1], [1, 1], None, x)
    with pytest.raises(ValueError, match="temperatures"):
        fused_probs(members, [1, 1], [1.0, -2.0], x)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        fused_probs(members, [1, 1], None, x.astype(np.int64) + 300)


def test_flip_tta_is_the_mean_over_the_mirrors_and_the_shipped_model_applies_it(
        shipped, members, images):
    """--tta flip: each member's softmax averaged over the images and their left-right
    mirrors; a model logged with it answers as the report scored its members."""
    x = images[0]
    ckpt = checkpoint.load(members[1])
    mirrored = np.ascontiguousarray(x[:, :, ::-1])
    np.testing.assert_allclose(predict_probs(ckpt, x, tta="flip"),
                               (predict_probs(ckpt, x) + predict_probs(ckpt, mirrored)) / 2,
                               atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="unknown test-time augmentation 'rotate'"):
        predict_probs(ckpt, x, tta="rotate")
    want = fused_probs(members, WEIGHTS, TEMPERATURES, x, fused_temperature=FUSED_T, tta="flip")
    assert not np.allclose(want, fused_probs(members, WEIGHTS, TEMPERATURES, x,
                                             fused_temperature=FUSED_T))
    client = mlflow.MlflowClient(shipped["uri"])
    run_id = client.create_run(client.get_experiment_by_name("ship").experiment_id).info.run_id
    uri, _ = log_ensemble(run_id, members, WEIGHTS, TEMPERATURES, f"{NAME}-tta", shipped["uri"],
                          fused_temperature=FUSED_T, tta="flip")
    got = mlflow.pyfunc.load_model(uri).predict(x)[list(PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        log_ensemble(run_id, members, WEIGHTS, None, f"{NAME}-tta", shipped["uri"], tta="x")


def test_flip_tta_probabilities_are_cached_apart(members, split, tmp_path):
    from analysis.inference import cached_probs

    plain = cached_probs(tmp_path, members[1], split)
    flip = cached_probs(tmp_path, members[1], split, tta="flip")
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert not np.array_equal(plain[1], flip[1])
    np.testing.assert_array_equal(
        flip[0], predict_probs(checkpoint.load(members[1]), split.x_val, tta="flip"))
    np.testing.assert_array_equal(cached_probs(tmp_path, members[1], split, tta="flip")[1],
                                  flip[1])  # read back from the cache


def test_log_ensemble_refuses_bad_members(shipped, members, tmp_path):
    with pytest.raises(ValueError, match="1 weights for 2 members"):
        log_ensemble(shipped["run_id"], members, [1.0], None, NAME, shipped["uri"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match=r"bad\.pt"):
        log_ensemble(shipped["run_id"], [bad], [1.0], None, NAME, shipped["uri"])
    assert [str(v.version) for v in mlflow.MlflowClient(shipped["uri"]).search_model_versions(
        f"name='{NAME}'")] == ["1"]


@pytest.mark.slow
def test_model_loads_without_the_repository(shipped, images, expected, tmp_path):
    """A fresh interpreter outside the repository, with tunefuse's editable install switched
    off, loads the model: the code travels with it."""
    np.save(tmp_path / "x.npy", images[0])
    script = """
import json, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if 'tunefuse' not in (getattr(f, '__module__', None) or '')]
sys.path[:] = [p for p in sys.path if p not in ('', sys.argv[1]) and '__editable__' not in p]
import numpy as np, mlflow.pyfunc
try:
    import analysis
    sys.exit('analysis is importable before loading the model')
except ImportError:
    pass
frame = mlflow.pyfunc.load_model(sys.argv[2]).predict(np.load('x.npy'))
import analysis.ensemble
print(json.dumps({"probs": frame.drop(columns='label').values.tolist(),
                  "code": analysis.ensemble.__file__}))
"""
    env = {**ENV, "MLFLOW_TRACKING_URI": shipped["uri"]}
    out = subprocess.run([sys.executable, "-c", script, str(ROOT), shipped["model_uri"]],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["code"].startswith(str(ROOT))
    np.testing.assert_allclose(np.array(got["probs"]), expected, atol=1e-6, rtol=0)


def wait_for_ping(base: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the server exited: " + log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, f"no /ping answer in {timeout:.0f} s: " + \
            log.read_text()[-3000:]
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own session (the CLI and the uvicorn it execs), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.slow
def test_served_model_answers_http(shipped, images, expected, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "models", "serve", "-m", shipped["model_uri"],
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            # the CLI execs `uvicorn` found on PATH: this environment's
            env={**ENV, "MLFLOW_TRACKING_URI": shipped["uri"],
                 "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    try:
        wait_for_ping(base, proc, log)
        body = json.dumps({"inputs": images[0][:3].tolist()}).encode()
        request = urllib.request.Request(f"{base}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            rows = json.loads(r.read())["predictions"]
    finally:
        stop_group(proc)
    assert [row["label"] for row in rows] == expected[:3].argmax(1).tolist()
    got = np.array([[row[c] for c in PROB_COLUMNS] for row in rows])
    np.testing.assert_allclose(got, expected[:3], atol=1e-6, rtol=0)


# --- the predict CLI: every input format --------------------------------------------------------

def write_pngs(folder: Path, x: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(x):
        Image.fromarray(img).save(folder / f"img_{i:03d}.png")
    return folder


def write_csv(path: Path, x: np.ndarray, y=None, header: bool = True) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow((["label"] if y is not None else []) +
                       [f"pixel{i}" for i in range(1, 785)])
        for i, img in enumerate(x):
            w.writerow(([int(y[i])] if y is not None else []) + img.reshape(-1).tolist())
    return path


def make_input(kind: str, folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    if kind == "idx":
        return write_idx(folder / "images-idx3-ubyte", x)
    if kind == "idx.gz":
        return write_idx(folder / "images-idx3-ubyte.gz", x)
    if kind == "npy":
        np.save(folder / "images.npy", x)
        return folder / "images.npy"
    if kind == "png":
        return write_pngs(folder / "pngs", x)
    if kind == "csv-label":
        return write_csv(folder / "kaggle.csv", x, y)
    if kind == "csv-plain":
        return write_csv(folder / "plain.csv", x, header=False)
    if kind == "csv-label-noheader":
        return write_csv(folder / "noheader.csv", x, y, header=False)
    raise AssertionError(kind)


def run_main(capsys, *args):
    code = predict.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("kind", ["idx", "idx.gz", "npy", "png", "csv-label", "csv-plain",
                                  "csv-label-noheader"])
def test_predict_every_format(kind, shipped, images, expected, tmp_path, capsys):
    x, y = images
    source = make_input(kind, tmp_path, x, y)
    out_csv = tmp_path / "out" / "preds.csv"
    code, stdout, stderr = run_main(capsys, "--model-uri", shipped["model_uri"], "--input",
                                    source, "--output", out_csv, "--probs")
    assert code == 0, stderr
    got = pd.read_csv(out_csv)
    assert list(got.columns) == ["id", "label", *PROB_COLUMNS]
    ids = [f"img_{i:03d}.png" for i in range(20)] if kind == "png" else list(range(20))
    assert got["id"].tolist() == ids
    assert got["label"].tolist() == expected.argmax(1).tolist()
    np.testing.assert_allclose(got[list(PROB_COLUMNS)].to_numpy(), expected, atol=1e-9, rtol=0)
    if kind.startswith("csv-label"):
        correct = int((expected.argmax(1) == y).sum())
        assert f"accuracy {correct / 20:.4f} ({correct}/20)" in stdout
    else:
        assert "accuracy" not in stdout


def test_predict_without_probs_writes_id_and_label(shipped, images, expected, tmp_path,
                                                   capsys):
    source = make_input("npy", tmp_path, *images)
    code, _, stderr = run_main(capsys, "--model-uri", shipped["model_uri"], "--input", source,
                               "--output", tmp_path / "p.csv", "--tracking-uri", shipped["uri"])
    assert code == 0, stderr
    got = pd.read_csv(tmp_path / "p.csv")
    assert list(got.columns) == ["id", "label"]
    assert got["label"].tolist() == expected.argmax(1).tolist()


@pytest.mark.slow
def test_predict_command_line_end_to_end(shipped, images, expected, tmp_path):
    x, y = images
    source = write_csv(tmp_path / "test.csv", x, y)
    out = subprocess.run([sys.executable, "-m", "analysis.predict", "--model-uri",
                          shipped["model_uri"], "--tracking-uri", shipped["uri"], "--input",
                          str(source), "--output", str(tmp_path / "preds.csv"), "--probs"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "wrote 20 predictions" in out.stdout and "accuracy" in out.stdout
    got = pd.read_csv(tmp_path / "preds.csv")
    assert got["label"].tolist() == expected.argmax(1).tolist()


# --- the predict CLI: malformed input -----------------------------------------------------------

def _rgb_png(folder: Path) -> Path:
    write_pngs(folder, np.zeros((2, 28, 28), np.uint8))
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "img_999.png")  # RGB
    return folder


def _png_of(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _csv_text(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


HEAD = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
ROW = "3," + ",".join(["0"] * 784)

MALFORMED = {
    # case: (make(tmp) -> path, the part of the path the message names, expected fragment)
    "missing file": (lambda t: t / "nothere.npy", "nothere.npy", "no such file"),
    "unknown extension": (lambda t: _csv_text(t / "x.txt", ["1,2"]), "x.txt", "unknown kind"),
    "empty csv": (lambda t: _csv_text(t / "e.csv", []), "e.csv", "is empty"),
    "csv header only": (lambda t: _csv_text(t / "h.csv", [HEAD]), "h.csv", "only a header"),
    "csv 783 pixel columns": (lambda t: _csv_text(t / "c.csv", [HEAD.rsplit(",", 1)[0]]),
                              "c.csv", "783 pixel columns"),
    "csv unnamed 700 columns": (lambda t: _csv_text(t / "u.csv", [",".join(["1"] * 700)]),
                                "u.csv", "line 1 has 700 columns"),
    "csv short row": (lambda t: _csv_text(t / "r.csv", [HEAD, ROW, ROW[:-2]]), "r.csv",
                      "line 3 has 784 columns"),
    "csv non-numeric pixel": (lambda t: _csv_text(t / "n.csv", [HEAD, ROW, "3,0,0,0,abc" +
                                                                 ",0" * 780]),
                              "n.csv", "line 3, column 5: 'abc' is not a number"),
    "csv pixel 256": (lambda t: _csv_text(t / "v.csv", [HEAD, "3,256" + ",0" * 783]), "v.csv",
                      "line 2, column 2: '256' is not a pixel value"),
    "csv negative pixel": (lambda t: _csv_text(t / "m.csv", [HEAD, "3,0,-1" + ",0" * 782]),
                           "m.csv", "line 2, column 3: '-1'"),
    "csv label 12": (lambda t: _csv_text(t / "l.csv", [HEAD, ROW, "12" + ROW[1:]]), "l.csv",
                     "line 3: label '12' is not a class"),
    "npy empty file": (lambda t: _csv_text(t / "z.npy", []), "z.npy", "not a readable .npy"),
    "npy 32x32": (lambda t: _save(t / "s.npy", np.zeros((2, 32, 32), np.uint8)), "s.npy",
                  "shape (2, 32, 32)"),
    "npy value 300": (lambda t: _save(t / "o.npy", _with(np.zeros((3, 28, 28), np.int16), 300)),
                      "o.npy", "image 1 has the value 300 at row 4, column 5"),
    "npy no images": (lambda t: _save(t / "0.npy", np.zeros((0, 28, 28), np.uint8)), "0.npy",
                      "holds no images"),
    "idx 32x32": (lambda t: write_idx(t / "a-idx3-ubyte", np.zeros((2, 32, 32), np.uint8)),
                  "a-idx3-ubyte", "2x32x32 array"),
    "idx labels file": (lambda t: write_idx(t / "l-idx1-ubyte.gz", np.zeros(5, np.uint8)),
                        "l-idx1-ubyte.gz", "labels file"),
    "idx truncated": (lambda t: _bytes(t / "t-idx3-ubyte", bytes([0, 0, 8, 3]) +
                                       struct.pack(">3I", 2, 28, 28) + bytes(100)),
                      "t-idx3-ubyte", "is truncated: the header says 2x28x28"),
    "idx bad gzip": (lambda t: _bytes(t / "g-idx3-ubyte.gz", b"plain bytes"), "g-idx3-ubyte.gz",
                     "not a valid gzip"),
    # converted by default; refused with --strict (a case named "... --strict" passes it)
    "png rgb --strict": (lambda t: _rgb_png(t / "pngs"), "img_999.png", "RGB colour image"),
    "png 30x28 --strict": (lambda t: _png_of(t / "w" / "a.png", np.zeros((28, 30), np.uint8)),
                           "a.png", "is 30x28 pixels"),
    "png unreadable": (lambda t: _bytes(t / "q" / "b.png", b"\x89PNG garbage"), "b.png",
                       "not a readable PNG"),
    "png folder of unreadable files": (lambda t: _unreadable_folder(t / "u"), "u",
                                       "none of its 2 .png files is a readable image"),
    "png folder one unreadable --strict": (lambda t: _one_unreadable(t / "o"), "bad.png",
                                           "not a readable PNG"),
    "empty folder": (lambda t: _mkdir(t / "empty"), "empty", "holds no .png files"),
}


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _with(array: np.ndarray, value) -> np.ndarray:
    array[1, 4, 5] = value
    return array


def _bytes(path: Path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _unreadable_folder(folder: Path) -> Path:
    _bytes(folder / "a.png", b"\x89PNG garbage")
    _bytes(folder / "b.png", b"not an image at all")
    return folder


def _one_unreadable(folder: Path) -> Path:
    write_pngs(folder, np.zeros((2, 28, 28), np.uint8))
    _bytes(folder / "bad.png", b"\x89PNG garbage")
    return folder


@pytest.mark.parametrize("case", list(MALFORMED))
def test_predict_refuses_malformed_input(case, tmp_path, capsys):
    make, names, fragment = MALFORMED[case]
    source = make(tmp_path)
    # the input is read before the model loads: a URI that cannot load shows it is never needed
    strict = ["--strict"] if case.endswith("--strict") else []
    code, _, stderr = run_main(capsys, "--model-uri", "models:/never-loaded/1", "--input",
                               source, "--output", tmp_path / "out.csv", *strict)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert names in lines[0] and fragment in lines[0], lines[0]
    assert not (tmp_path / "out.csv").exists()


def test_predict_refuses_a_model_that_does_not_load(shipped, images, tmp_path, capsys):
    source = make_input("npy", tmp_path, *images)
    code, _, stderr = run_main(capsys, "--model-uri", f"models:/{NAME}/99", "--input", source,
                               "--output", tmp_path / "out.csv")
    lines = stderr.strip().splitlines()
    assert code == 2 and f"models:/{NAME}/99: cannot load the model" in lines[-1]
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("make, fragment", [
    (lambda t: _rgb_png(t / "pngs"), "img_999.png: is an RGB colour image (mode RGB)"),
    (lambda t: t / "missing.csv", "missing.csv: no such file"),
])
def test_predict_command_line_errors_are_one_line(make, fragment, tmp_path):
    out = subprocess.run([sys.executable, "-m", "analysis.predict", "--model-uri",
                          "models:/x/1", "--input", str(make(tmp_path)), "--output",
                          str(tmp_path / "out.csv"), "--strict"], cwd=ROOT, capture_output=True,
                         text=True,
                         timeout=120, env=ENV)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in out.stderr, out.stderr


def test_gzip_and_raw_idx_read_alike(images, tmp_path):
    x = images[0]
    raw = read_images(write_idx(tmp_path / "a-idx3-ubyte", x))
    gz = read_images(write_idx(tmp_path / "a-idx3-ubyte.gz", x))
    assert np.array_equal(raw[1], gz[1]) and np.array_equal(raw[1], x)
    assert gzip.decompress((tmp_path / "a-idx3-ubyte.gz").read_bytes()) == \
        (tmp_path / "a-idx3-ubyte").read_bytes()


# --- the predict CLI: PNGs as people have them (any mode, any size), unreadable files ---------

def _a_frame(x: np.ndarray) -> pd.DataFrame:  # a stand-in model: the label is the mean // 26
    label = (x.reshape(len(x), -1).mean(1) // 26).astype(np.int64)
    return pd.DataFrame({"label": label, **{f"p{c}": [0.1] * len(x) for c in range(10)}})


def _people_pngs(folder: Path) -> dict[str, np.ndarray]:
    """Two plain 28x28 grayscale PNGs, an RGB one (b_rgb.png), a 56x56 one and an RGBA 40x30
    one; returns each file's source array."""
    rng = np.random.default_rng(7)
    arrays = {"a_plain.png": rng.integers(0, 256, (28, 28), dtype=np.uint8),
              "b_rgb.png": rng.integers(0, 256, (28, 28, 3), dtype=np.uint8),
              "c_big.png": rng.integers(0, 256, (56, 56), dtype=np.uint8),
              "d_rgba.png": rng.integers(0, 256, (30, 40, 4), dtype=np.uint8),
              "e_plain.png": rng.integers(0, 256, (28, 28), dtype=np.uint8)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        Image.fromarray(a).save(folder / name)
    return arrays


def test_png_folder_converts_any_mode_and_size_as_pillow_does(tmp_path):
    from analysis import images as reader

    folder = tmp_path / "pngs"
    arrays = _people_pngs(folder)
    read = reader.read_input(folder)
    assert read.ids == sorted(arrays) and read.images.shape == (5, 28, 28)
    assert read.images.dtype == np.uint8 and read.skipped == []
    for name, got in zip(read.ids, read.images, strict=True):
        with Image.open(folder / name) as im:
            want = im.convert("L")
            if want.size != (28, 28):
                want = want.resize((28, 28), Image.Resampling.LANCZOS)
            np.testing.assert_array_equal(got, np.asarray(want))
    np.testing.assert_array_equal(read.images[0], arrays["a_plain.png"])  # untouched
    assert conversion_line(read) == ("converted 3 of 5 images to 28x28 grayscale "
                                     "(1 RGB, 1 RGBA, 1 of 40x30, 1 of 56x56)")
    with pytest.raises(reader.InputError, match=r"b_rgb\.png: is an RGB colour image \(mode "
                                                r"RGB\), not 8-bit grayscale"):
        reader.read_input(folder, strict=True)


def test_png_16_bit_is_scaled_to_0_255(tmp_path):
    from analysis import images as reader

    x = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 83  # 0..65006
    Image.fromarray(x).save(tmp_path / "deep.png")
    read = reader.read_input(tmp_path / "deep.png")
    np.testing.assert_array_equal(read.images[0], np.round(x / 257.0).astype(np.uint8))
    assert len(read.converted) == 1


def test_predict_converts_an_rgb_and_a_56x56_png_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict, "predict_frame", lambda uri, x, t=None: _a_frame(x))
    folder = tmp_path / "pngs"
    write_pngs(folder, np.full((3, 28, 28), 200, np.uint8))
    Image.fromarray(np.full((28, 28, 3), 100, np.uint8)).save(folder / "b_rgb.png")
    Image.fromarray(np.full((56, 56), 52, np.uint8)).save(folder / "c_56.png")
    code, stdout, stderr = run_main(capsys, "--model-uri", "models:/m/1", "--input", folder,
                                    "--output", tmp_path / "p.csv")
    assert code == 0 and stderr == "", stderr
    assert ("converted 2 of 5 images to 28x28 grayscale (1 RGB, 1 of 56x56)"
            in stdout.splitlines())
    got = pd.read_csv(tmp_path / "p.csv")
    assert got["id"].tolist() == ["b_rgb.png", "c_56.png", "img_000.png", "img_001.png",
                                  "img_002.png"]
    assert got["label"].tolist() == [100 // 26, 2, 7, 7, 7]
    # --strict: the old refusal, nothing written
    code, _, stderr = run_main(capsys, "--model-uri", "models:/m/1", "--input", folder,
                               "--output", tmp_path / "s.csv", "--strict")
    assert code == 2 and not (tmp_path / "s.csv").exists()
    assert stderr.strip().splitlines() == [
        f"error: {folder / 'b_rgb.png'}: is an RGB colour image (mode RGB), not 8-bit "
        f"grayscale (mode L); {FIX_PNG}"]


def test_predict_labels_the_rest_of_a_folder_with_unreadable_files(tmp_path, monkeypatch,
                                                                   capsys):
    from trainables.cli import EXIT_SKIPPED

    monkeypatch.setattr(predict, "predict_frame", lambda uri, x, t=None: _a_frame(x))
    folder = tmp_path / "pngs"
    write_pngs(folder, np.full((2, 28, 28), 52, np.uint8))
    _bytes(folder / "bad.png", b"\x89PNG garbage")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(
        buf, format="PNG")
    _bytes(folder / "cut.png", buf.getvalue()[:400])  # truncated in its pixel data
    code, stdout, stderr = run_main(capsys, "--model-uri", "models:/m/1", "--input", folder,
                                    "--output", tmp_path / "p.csv")
    assert code == EXIT_SKIPPED == 5
    got = pd.read_csv(tmp_path / "p.csv")
    assert got["id"].tolist() == ["img_000.png", "img_001.png"]
    assert got["label"].tolist() == [2, 2]
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith(f"skipped {folder / 'bad.png'}: not a readable PNG image")
    assert lines[1].startswith(f"skipped {folder / 'cut.png'}: not a readable PNG image")
    assert "wrote 2 predictions" in stdout and "converted" not in stdout


def test_predict_help_names_the_registered_model(capsys):
    from analysis import report

    with pytest.raises(SystemExit) as e:
        predict.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    name = report.parser().get_default("registered_name")
    assert name == "tunefuse-ensemble"
    assert f"models:/{name}/1" in text and "tunefuse-fashion" not in text
    assert "--strict" in text and "5 done" in text
    assert f"models:/{name}/1" in predict.__doc__
