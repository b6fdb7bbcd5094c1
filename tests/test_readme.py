"""The README and docs/ say what the code does: the profiles' numbers match search/profiles.py,
the README stays a five-minute read, every relative link leads to a file, and the seed study is
cited only through the repository's own docs/seed.md. Reads text only: no Ray, no training."""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

from analysis.methods import method
from search.profiles import PROFILES
from trainables.models import card

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PROFILES_DOC = ROOT / "docs" / "profiles.md"
MODELS = ("cnn", "resnet18", "inception")
# a five-minute read: its prose (what is read; code blocks and tables are copied or looked up)
# and the whole of it
README_MAX_PROSE_WORDS, README_MAX_WORDS = 800, 1_300


# --- reading markdown tables ------------------------------------------------------------------

def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every table of a markdown text, as rows of {header: cell}."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            header, rows, i = cells(lines[i]), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, cells(lines[i]), strict=True)))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def profile_rows(path: Path) -> list[dict[str, str]]:
    """The rows of every table of ``path`` whose first column is "profile"."""
    rows = [row for table in tables(path.read_text()) for row in table
            if next(iter(row)) == "profile"]
    for row in rows:
        row["profile"] = row["profile"].strip("`")
    return rows


def numbers(cell: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", cell)]


def grids(cell: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """'cnn {64, 128} x {8}; resnet18, inception {64, 128} x {3}' -> model: (batches, epochs);
    a part that names no model is every model's grid."""
    out = {}
    for part in cell.split(";"):
        m = re.fullmatch(r"\s*(?:(?P<models>[a-z0-9, ]+?)\s+)?\{(?P<b>[\d, ]+)\}\s*x\s*"
                         r"\{(?P<e>[\d, ]+)\}\s*", part)
        assert m, f"cannot read the grid {part!r}"
        models = [s.strip() for s in m["models"].split(",")] if m["models"] else MODELS
        for model in models:
            out[model] = (tuple(numbers(m["b"])), tuple(numbers(m["e"])))
    return out


def asha_rungs(p) -> list[int]:
    """Rungs at grace_period * reduction_factor**k below the longest schedule (a rung counts
    only for trials longer than it, search/asha.py)."""
    longest = max(max(p.grid(m)[1]) for m in MODELS)
    rungs, r = [], p.grace_period
    while r < longest:
        rungs.append(int(r))
        r *= p.reduction_factor
    return rungs


def check_row(row: dict[str, str], where: str) -> set[str]:
    """Assert every known column of a profile row against PROFILES; return the columns seen."""
    p = PROFILES[row["profile"]]
    seen = set()
    for column, cell in row.items():
        what = f"{where}, profile {p.name}, column {column!r}: {cell!r}"
        if column == "train size (train / val)":
            total, train, val = numbers(cell)
            assert total == p.train_size and train + val == total and val == total // 10, what
        elif column == "grids (batch sizes x epochs)":
            assert grids(cell) == {m: p.grid(m) for m in MODELS}, what
        elif column == "widths":
            assert {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", cell)} == \
                {m: p.width(m) for m in MODELS if card(m).takes_width}, what
        elif column == "class-weight trials":
            assert int(cell) == p.weights_trials, what
        elif column == "warm-up epochs":
            assert int(cell) == p.warmup_epochs, what
        elif column == "ASHA rungs":
            assert numbers(cell) == asha_rungs(p), what
            # no rung inside the grids' lengths: the cell says so
            assert numbers(cell)[0] == p.grace_period if asha_rungs(p) else cell == "none", what
        elif column == "ASHA factor":
            assert float(cell) == p.reduction_factor, what
        elif column == "ASHA margin":
            assert float(cell) == p.asha_margin, what
        elif column == "class-weight fallback":
            m = re.fullmatch(r"b(\d+), (\d+) epochs", cell)
            assert m and (int(m[1]), int(m[2])) == (p.weights_batch_size, p.weights_epochs), what
        elif column == "augmentation":
            if cell == "the seed's":
                assert not p.augment, what
            else:  # "flip", or "flip (resnet18: shift)" where one model differs
                m = re.fullmatch(r"(\w+)(?: \((\w+): (\w+)\))?", cell)
                assert m, what
                expected = {model: m[1] for model in MODELS}
                if m[2]:
                    expected[m[2]] = m[3]
                assert p.augment == expected, what
        elif column == "fusion":
            m = re.fullmatch(r"(\w+)(?:, top (\d+))?(, temperature-scaled)?(, flip TTA)?", cell)
            assert m, what
            assert (m[1], bool(m[3])) == (p.fusion_method, p.fusion_calibrate), what
            # greedy and nll weigh every candidate: no top k to state
            assert (int(m[2]) if m[2] else None) == \
                (None if method(p.fusion_method).pooled else p.fusion_top_k), what
            assert ("flip" if m[4] else "none") == p.fusion_tta, what
            assert p.fusion_per_model_cap is None, what
        else:
            continue
        seen.add(column)
    return seen


# --- the profiles -----------------------------------------------------------------------------

@pytest.mark.parametrize("path, columns", [
    (README, {"train size (train / val)", "grids (batch sizes x epochs)", "widths",
              "class-weight trials"}),
    (PROFILES_DOC, {"train size (train / val)", "grids (batch sizes x epochs)", "widths",
                    "class-weight trials", "warm-up epochs", "ASHA rungs", "ASHA factor",
                    "ASHA margin",
                    "class-weight fallback", "augmentation", "fusion"}),
], ids=["README", "docs/profiles.md"])
def test_profile_tables_match_search_profiles(path, columns):
    rows = profile_rows(path)
    assert {row["profile"] for row in rows} == set(PROFILES), path
    seen = {name: set() for name in PROFILES}
    for row in rows:
        seen[row["profile"]] |= check_row(row, path.name)
    for name in PROFILES:
        assert seen[name] == columns, f"{path.name}, profile {name}: {columns - seen[name]}"


def test_the_table_reader_reads_what_it_checks():
    assert grids("cnn {64, 128} x {8}; resnet18, inception {64, 128} x {3}") == {
        "cnn": ((64, 128), (8,)), "resnet18": ((64, 128), (3,)),
        "inception": ((64, 128), (3,))}
    assert grids("{32, 64} x {20, 200}")["inception"] == ((32, 64), (20, 200))
    assert numbers("30,000 (27,000 / 3,000)") == [30000, 27000, 3000]
    assert asha_rungs(PROFILES["seed"]) == [10, 30, 90]
    with pytest.raises(AssertionError):
        check_row({"profile": "quick", "class-weight trials": "10"}, "a wrong row")
    with pytest.raises(AssertionError):
        check_row({"profile": "quick", "widths": "resnet18 16, inception 16"}, "a wrong row")


# --- the README and the links -----------------------------------------------------------------

def test_readme_is_a_five_minute_read():
    text = README.read_text()
    prose = [ln for ln in re.sub(r"```.*?```", "", text, flags=re.S).splitlines()
             if not ln.lstrip().startswith("|")]
    words = len(" ".join(prose).split())
    assert words <= README_MAX_PROSE_WORDS, f"README.md has {words} words of prose"
    assert len(text.split()) <= README_MAX_WORDS, f"README.md has {len(text.split())} words"


def repo_files() -> list[Path]:
    """Tracked files and untracked ones git does not ignore (.git and .venv are neither)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_the_seed_is_cited_through_docs_seed_md_only():
    """Users have docs/seed.md, not the documents it was written from."""
    banned = [("SEED" + ".md").encode(), (".." + "/shared").encode()]
    hits = [f"{path.relative_to(ROOT)}: {word.decode()}" for path in repo_files()
            if path.is_file() for word in banned if word in path.read_bytes()]
    assert not hits, hits
    seed = (ROOT / "docs" / "seed.md").read_text()
    headings = re.findall(r"^#+ (.+)$", seed, re.M)
    for section in ("The task", "Models", "Training", "Tuning", "Evaluation", "Fusion"):
        assert section in headings, f"docs/seed.md has no section {section!r}"
    for part in ("1. ", "2. ", "3. "):
        assert any(h.startswith(part) for h in headings), f'docs/seed.md, "Models" {part}'


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = unicodedata.normalize("NFC", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # not inside code blocks
    links = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    links += re.findall(r"<(?:img|a)\s[^>]*?(?:src|href)=\"([^\"]+)\"", text)
    broken = []
    for link in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:, ...
            continue
        target, _, fragment = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(link)
        elif fragment and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
            if fragment not in {anchor(h) for h in headings}:
                broken.append(link)
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"
