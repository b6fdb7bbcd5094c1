"""PNG images people bring, read as (N, 28, 28) uint8 arrays (analysis/images.py reads a folder
or a .png through here): any mode and size converted to 28x28 grayscale as Pillow converts it,
unreadable files skipped; ``strict`` refuses both. Pillow is imported where it reads
(matplotlib requires it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import MappingProxyType

import numpy as np

from analysis.pixels import H, InputError, Read, W

MODES = MappingProxyType({
    "RGB": "an RGB colour", "RGBA": "an RGBA colour", "LA": "a grayscale+alpha",
    "P": "a palette", "I;16": "a 16-bit", "I": "a 32-bit", "F": "a floating-point",
    "CMYK": "a CMYK colour"})
FIX_PNG = ("convert it to a 28x28 8-bit grayscale PNG (mode L), e.g. with Pillow: "
           "Image.open(f).convert('L').resize((28, 28))")


def read_png_folder(path: Path, strict: bool = False) -> Read:
    try:
        files = sorted((p for p in path.iterdir()
                        if p.is_file() and p.suffix.lower() == ".png"), key=lambda p: p.name)
    except OSError as e:
        raise InputError(f"{path}: cannot list the folder ({e.strerror or e}); check its "
                         "permissions") from None
    if not files:
        raise InputError(f"{path}: holds no .png files; put 28x28 grayscale PNGs in the folder")
    return read_pngs(files, strict, folder=path)


def _unreadable(f: Path, e: Exception) -> str:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return f"{f}: not a readable PNG image ({reason})"


def _refuse(f: Path, fmt: str, mode: str, size: tuple[int, int]) -> None:
    """--strict: one line for the first image that is not a 28x28 8-bit grayscale PNG."""
    if fmt != "PNG":
        raise InputError(f"{f}: is a {fmt} file, not a PNG; {FIX_PNG}")
    if mode not in ("L", "1"):
        kind = MODES.get(mode, f"a mode-{mode}")
        raise InputError(f"{f}: is {kind} image (mode {mode}), not 8-bit grayscale "
                         f"(mode L); {FIX_PNG}")
    if size != (W, H):
        raise InputError(f"{f}: is {size[0]}x{size[1]} pixels, not 28x28; {FIX_PNG}")


def to_gray28(im):
    """Any Pillow image -> a 28x28 uint8 array: grayscale (``convert("L")``; 16-bit and 32-bit
    integer images scaled from 0..65535, floating-point ones clipped to 0..255, or from 0..1),
    then, when not 28x28, resized with Lanczos antialiasing."""
    from PIL import Image

    if im.mode.startswith("I") or im.mode == "F":
        x = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        # integers: PNG stores at most 16 bits a sample; floats: 0..1 or already 0..255
        scale = 1 / 257 if im.mode != "F" else 255.0 if x.max(initial=0.0) <= 1.0 else 1.0
        x = x * scale
        im = Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8), mode="L")
    elif im.mode != "L":
        im = im.convert("L")
    if im.size != (W, H):
        im = im.resize((W, H), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def read_pngs(files: list[Path], strict: bool = False, folder: Path | None = None) -> Read:
    """Read PNGs. By default any image is converted to 28x28 grayscale (``Read.converted``
    says why) and an unreadable file is skipped (``Read.skipped``); with ``strict`` the first
    image that is not a 28x28 8-bit grayscale PNG, or unreadable, refuses them all."""
    from PIL import Image, UnidentifiedImageError  # Pillow: matplotlib requires it

    ids, images, converted, skipped = [], [], [], []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                fmt, mode, size = im.format, im.mode, im.size
                plain = fmt == "PNG" and mode in ("L", "1") and size == (W, H)
                if plain:
                    images.append(np.asarray(im.convert("L"), dtype=np.uint8))
                elif not strict:
                    images.append(to_gray28(im))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            if strict:
                raise InputError(f"{_unreadable(f, e)}; {FIX_PNG}") from None
            skipped.append(_unreadable(f, e))
            continue
        if strict:
            _refuse(f, fmt, mode, size)
        elif not plain:
            why = [fmt] if fmt != "PNG" else []
            why += [mode] if mode not in ("L", "1") else []
            why += [f"of {size[0]}x{size[1]}"] if size != (W, H) else []
            converted.append(", ".join(why))
        ids.append(f.name)
    if not images:
        if len(files) == 1:
            raise InputError(f"{skipped[0]}; {FIX_PNG}")
        raise InputError(f"{folder or files[0].parent}: none of its {len(files)} .png files is "
                         f"a readable image (first: {skipped[0]}); {FIX_PNG}")
    return Read(ids, np.stack(images), None, converted, skipped)


def conversion_line(read: Read) -> str | None:
    """One line: how many images were converted and why, e.g. "converted 2 of 5 images to
    28x28 grayscale (1 RGB, 1 of 56x56)"; None when none was."""
    if not read.converted:
        return None
    reasons = Counter(r for why in read.converted for r in why.split(", "))
    parts = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(),
                                                     key=lambda kv: (kv[0].startswith("of "),
                                                                     kv[0])))
    return (f"converted {len(read.converted)} of {len(read.ids)} images to 28x28 grayscale "
            f"({parts})")
