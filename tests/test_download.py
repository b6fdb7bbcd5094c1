"""--download against real HTTP mirrors served on 127.0.0.1 (this machine has no other network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
from conftest import write_idx_set

from trainables import data


@pytest.fixture
def mirror(tmp_path):
    """Serve tmp_path/www over HTTP; yields (base_url, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def published(folder: Path, url: str) -> tuple[list[tuple[str, str]], str]:
    """Publish a small gzipped set under folder/good; return its (name, md5) list and mirror."""
    good = write_idx_set(folder / "good", gz=True)
    resources = [(f"{n}.gz", hashlib.md5((good / f"{n}.gz").read_bytes()).hexdigest())
                 for n in data.FILES.values()]
    return resources, f"{url}/good/"


def test_default_mirrors_are_torchvision_s():
    from torchvision.datasets import FashionMNIST

    names = [name for name, _ in FashionMNIST.resources]
    assert sorted(names) == sorted(f"{n}.gz" for n in data.FILES.values())


def test_download_verifies_and_falls_back(mirror, tmp_path):
    url, root = mirror
    resources, good = published(root, url)
    dest = tmp_path / "dest"
    data.download_files(dest, mirrors=[f"{url}/nowhere/", good], resources=resources)
    for name, md5 in resources:
        assert hashlib.md5((dest / name).read_bytes()).hexdigest() == md5
    assert not list(dest.glob("*.part"))
    assert len(data.load_split(dest, train_size=300).y_train) == 270


def test_checksum_mismatch_leaves_nothing(mirror, tmp_path):
    url, root = mirror
    resources, _ = published(root, url)
    bad = write_idx_set(root / "bad", gz=True, seed=9)  # same names, other bytes
    dest = tmp_path / "dest"
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.download_files(dest, mirrors=[f"{url}/{bad.name}/"], resources=resources)
    assert list(dest.iterdir()) == []


def test_locate_downloads_into_cache(mirror, no_default_data, monkeypatch):
    """The --download path of locate(): nothing anywhere, so fetch into the cache and use it."""
    from torchvision.datasets import FashionMNIST

    url, root = mirror
    resources, good = published(root, url)
    monkeypatch.setattr(FashionMNIST, "mirrors", [good])
    monkeypatch.setattr(FashionMNIST, "resources", resources)
    with pytest.raises(data.DataError, match="--download"):
        data.locate()
    source = data.locate(download=True)
    assert source.directory == data.cache_dir() and source.origin == "cache"
    assert data.locate().directory == data.cache_dir()  # found there next time, no download
