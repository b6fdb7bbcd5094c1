"""Fashion-MNIST fetched from torchvision's mirrors, each file's MD5 checked before it is kept
(``--download``; trainables/data.py says where the files are looked for first)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from trainables.files import digest_file
from trainables.idx import DataError


def download_files(dest: Path, mirrors: list[str] | None = None,
                   resources: list[tuple[str, str]] | None = None, timeout: float = 60) -> None:
    """Fetch the gzipped IDX files into ``dest``, trying each mirror until the MD5 matches.

    A file is only ever moved into place after its checksum matched, so an interrupted or
    corrupted download leaves nothing behind that a later run could mistake for data.
    """
    if mirrors is None or resources is None:
        from torchvision.datasets import FashionMNIST

        mirrors = FashionMNIST.mirrors if mirrors is None else mirrors
        resources = FashionMNIST.resources if resources is None else resources
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data folder {dest} ({e.strerror}); "
                        "pass --data-dir with a writable folder") from None
    for filename, md5 in resources:
        target = dest / filename
        if target.is_file() and digest_file(target, "md5") == md5:
            continue
        part = dest / f"{filename}.part"
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + filename
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response, \
                        open(part, "wb") as out:
                    while block := response.read(1 << 20):
                        out.write(block)
            except (urllib.error.URLError, OSError) as e:
                part.unlink(missing_ok=True)
                errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
                continue
            got = digest_file(part, "md5")
            if got != md5:
                part.unlink()
                errors.append(f"{url}: checksum mismatch (md5 {got}, expected {md5})")
                continue
            part.replace(target)
            break
        else:
            raise DataError(f"could not download {filename} ({'; '.join(errors)}); "
                            "install it with `apt-get install dataset-fashion-mnist` "
                            "or pass --data-dir")
