"""Label new 28x28 grayscale images with a logged model (the shipped ensemble, or any pyfunc
that answers ``label`` and ``p0``..``p9`` for (N, 28, 28) uint8 images).

    python -m analysis.predict --model-uri models:/tunefuse-ensemble/1 \
        --input t10k-images-idx3-ubyte.gz --output preds.csv [--probs] [--strict] \
        [--tracking-uri sqlite:///mlflow.db]

``--input`` is one of
    an IDX image file, raw or gzipped     ids are row indices (0-based)
    a .npy array (N, 28, 28) of 0..255    ids are row indices
    a Kaggle-style .csv                   784 pixel columns (``pixel1``..``pixel784``, or no
                                          header), an optional ``label`` column (with no header:
                                          a label first, then 784 pixels); ids are row indices
    a folder of PNGs (or one .png)        sorted by file name; ids are the file names
PNGs of any mode (RGB, RGBA, palette, 16-bit, ...) or size are converted to 28x28 grayscale
(Pillow's convert("L"), then a Lanczos resize) and one line on stdout counts them; a file in a
folder that is no readable image is skipped, named on stderr, and the exit code is 5.
``--strict`` refuses instead: the first such image stops the command (exit code 2).
The output CSV is ``id,label`` (and ``p0``..``p9`` with ``--probs``). When the input carries
labels, the accuracy is printed. Malformed input is one line on stderr, naming the file and the
row or image at fault, and exit code 2; nothing is written.

Exit codes: 0 done; 2 bad input or a model that does not load (nothing written); 5 done, but
some files of the folder were skipped as unreadable (the CSV holds the others).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from analysis.images import InputError, read_input
from analysis.pngs import conversion_line
from trainables.classes import NUM_CLASSES
from trainables.cli import EXIT_OK, EXIT_SKIPPED, EXIT_USAGE, ArgParser, exit_now, output
from trainables.files import first_line, write_reason

# --- the command ------------------------------------------------------------------------------

def _first_line(e: Exception) -> str:  # an MlflowException's own message, not its repr
    return first_line(getattr(e, "message", None) or e, 300)


def predict_frame(model_uri: str, images: np.ndarray, tracking_uri: str | None = None):
    """The model's answer (a DataFrame with ``label`` and ``p0``..) for ``images``."""
    import mlflow
    import mlflow.pyfunc
    import pandas as pd

    store = tracking_uri[len("sqlite:///"):] if (tracking_uri or "").startswith("sqlite:///") \
        else None
    if store and not Path(store).is_file():  # MLflow would create an empty one there
        raise InputError(f"{tracking_uri}: no MLflow store at {store}; check --tracking-uri "
                         "(e.g. sqlite:///outputs/mlflow.db)")
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    elif model_uri.startswith(("models:/", "runs:/")) and not os.environ.get(
            "MLFLOW_TRACKING_URI") and not any(Path(p).exists() for p in ("mlflow.db", "mlruns")):
        # MLflow would make an empty store in the current folder and then not find the model
        raise InputError(f"{model_uri}: a registry or run URI needs its tracking store; pass "
                         "--tracking-uri (e.g. sqlite:///outputs/mlflow.db) or set "
                         "MLFLOW_TRACKING_URI")
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as e:  # MlflowException, OSError, ...: one line for the user
        reason = _first_line(e)
        if "Max retries exceeded" in reason or "Connection refused" in reason:
            reason = "the tracking server does not answer; start it"
        raise InputError(f"{model_uri}: cannot load the model ({reason}); check "
                         "--model-uri and --tracking-uri") from None
    try:
        frame = model.predict(images)
    except Exception as e:
        raise InputError(f"{model_uri}: the model failed on the input ({_first_line(e)}); "
                         "it must take (N, 28, 28) uint8 images") from None
    if not (isinstance(frame, pd.DataFrame) and "label" in frame.columns
            and len(frame) == len(images)):
        raise InputError(f"{model_uri}: answered a {type(frame).__name__}, not a table with a "
                         f"'label' column for each of the {len(images)} images; use a tunefuse "
                         "ensemble (analysis.ensemble)")
    return frame


def write_predictions(path: Path, ids: list, frame, probs: bool) -> None:
    import pandas as pd

    out = pd.DataFrame({"id": ids, "label": frame["label"].to_numpy().astype(np.int64)})
    if probs:
        columns = [f"p{c}" for c in range(NUM_CLASSES)]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise InputError(f"{path}: the model gives no {', '.join(missing)}; "
                             "drop --probs or use the tunefuse ensemble")
        for c in columns:
            out[c] = frame[c].to_numpy(dtype=np.float64)
    tmp = path.with_name(path.name + ".tmp")
    try:  # atomic: a full disk never leaves half a CSV, nor replaces a previous one
        path.parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise InputError(f"{path}: cannot write the predictions ({write_reason(e)}); free "
                         "space or choose a writable --output") from None


def fail_fast() -> None:
    """A tracking server that does not answer fails the command at once (MLflow retries for
    minutes by default); settings the environment already has are kept."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def main(argv: list[str] | None = None) -> int:
    fail_fast()
    parser = ArgParser(prog="python -m analysis.predict",
                       description="Label 28x28 grayscale images with a logged model.",
                       epilog="PNGs of any mode or size are converted to 28x28 grayscale "
                       "(--strict refuses them). Exit codes: 0 done; 2 bad input, nothing "
                       "written; 5 done, but unreadable files of the folder were skipped "
                       "(named on stderr).")
    parser.add_argument("--model-uri", required=True,
                        help="the model, e.g. models:/tunefuse-ensemble/1 or "
                        "runs:/RUN/ensemble")
    parser.add_argument("--input", required=True, type=Path,
                        help="IDX file (raw or .gz), .npy, .csv, .png, or a folder of PNGs")
    parser.add_argument("--strict", action="store_true",
                        help="refuse PNGs that are not 28x28 8-bit grayscale, and a folder "
                        "with an unreadable file, instead of converting or skipping them")
    parser.add_argument("--output", required=True, type=Path, help="CSV to write")
    parser.add_argument("--probs", action="store_true", help="add columns p0..p9")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                        "$MLFLOW_TRACKING_URI); needed for models:/ URIs")
    args = parser.parse_args(argv)
    with output(args.verbosity):
        return predict(args)


def predict(args) -> int:
    """Label the images of ``args`` (main's flags); the exit code."""
    try:
        read = read_input(args.input, args.strict)
        frame = predict_frame(args.model_uri, read.images, args.tracking_uri)
        write_predictions(args.output, read.ids, frame, args.probs)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    converted = conversion_line(read)
    if converted:
        print(converted)
    print(f"wrote {len(read.ids)} predictions to {args.output}")
    if read.labels is not None:
        correct = int((frame["label"].to_numpy() == read.labels).sum())
        print(f"accuracy {correct / len(read.labels):.4f} ({correct}/{len(read.labels)}) "
              f"against the labels in {args.input}")
    for line in read.skipped:
        print(f"skipped {line}", file=sys.stderr)
    return EXIT_SKIPPED if read.skipped else EXIT_OK


if __name__ == "__main__":
    exit_now(main)
