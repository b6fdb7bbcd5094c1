"""The report page as a person reads it: the headline first, every figure with a title and a
reading computed from the summary, the figures side by side on a laptop screen."""

from __future__ import annotations

import itertools
import re
import struct
import zlib
from pathlib import Path

from conftest import wait_text

from analysis.readings import TITLES, figure_reading
from analysis.render import build, html, markdown, markdown_of
from analysis.summary import SEED_RESULTS


def tiny_png(path: Path, width: int = 120, height: int = 90) -> Path:
    """A plain red PNG, written without any plotting library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def scores(acc: float, ece: float, recall: list[float]) -> dict:
    return {"acc": acc, "nll": 0.3, "ece": ece, "precision": [0.9] * 10, "recall": recall,
            "f1": [0.9] * 10}


def hand_made_summary() -> dict:
    recall = [0.85, 0.98, 0.84, 0.9, 0.86, 0.97, 0.71, 0.96, 0.99, 0.95]
    members = [{"label": "cnn4 <b>&</b> lr=0.01", "model": "cnn4", "run_id": "a" * 32,
                "val_acc": 0.9, "test_acc": 0.895, "temperature": 1.2,
                "test": scores(0.895, 0.031, recall)},
               {"label": "resnet", "model": "resnet", "run_id": "b" * 32, "val_acc": 0.91,
                "test_acc": 0.9, "temperature": 1.1, "test": scores(0.9, 0.012, recall)}]
    test = scores(0.912, 0.008, recall)
    test["roc_auc"] = [0.99, 0.999, 0.98, 0.99, 0.985, 0.998, 0.93, 0.997, 0.999, 0.996]
    test["average_precision"] = [0.95, 0.99, 0.9, 0.93, 0.9, 0.98, 0.72, 0.97, 0.99, 0.98]
    return {
        "name": "hand", "created": "2026-01-01T00:00:00", "workspace": "/tmp/ws",
        "data": {"fingerprint": "f" * 64, "val_images": 5000, "test_images": 10000},
        "members": members, "best_member": "resnet",
        "fusion": {"method": "uniform", "calibrated": True, "weights": [0.5, 0.5],
                   "val_acc": 0.915, "test_acc": 0.912, "test_gain": 0.012,
                   "test_gain_interval": [0.006, 0.018], "bootstrap": 2000, "test": test},
        "asha_survival": {"cnn4-asha": [{"rung": 1, "reached": 8, "continued": 4},
                                        {"rung": 3, "reached": 4, "continued": 2}]},
    }


def test_report_page_reads_headline_first_with_titled_figures(tmp_path):
    summary = hand_made_summary()
    keys = ("roc", "precision_recall", "confusion", "reliability", "grid_heatmap",
            "asha_rungs")
    figures = {k: tiny_png(tmp_path / f"{k}.png") for k in keys}
    report = build(summary, figures)  # one model, two renderings
    md, page = markdown(report), html(report)

    # the headline: fusion vs the best member (with its test accuracy, the gain's interval)
    # and vs the seed's fusion, before any table or figure
    head = markdown_of(report.headline)
    seed_fusion = next(t for n, _, t in SEED_RESULTS if "fusion" in n.lower())
    for part in ("91.20%", "90.00% for resnet, the best member on validation", "+1.20 points",
                 "[+0.60, +1.80]", "2000 resamples", "above zero", f"{100 * seed_fusion:.2f}%",
                 f"{100 * (0.912 - seed_fusion):+.2f} points"):
        assert part in head, (part, head)
    assert md.index(head) < md.index("|") < md.index("![")
    assert page.index("id='headline'") < page.index("<table") < page.index("<figure")

    # every figure: a title that says what it shows, an image, a reading from the numbers
    cards = re.findall(r'<figure class="fig( wide)?" id="fig-(\w+)"><h3>(.*?)</h3>'
                       r'<img alt="(.*?)" src="data:image/png;base64,[^"]+">'
                       r"<figcaption>(.*?)</figcaption></figure>", page)
    assert [c[1] for c in cards] == list(keys)
    for wide, key, title, alt, reading in cards:
        assert title == alt == TITLES[key] and title != key
        assert len(reading) > 20 and 1 <= reading.count(". ") + 1 <= 3, reading
        assert bool(wide) == (key in ("grid_heatmap", "asha_rungs"))
        assert f"### {title}" in md and f"![{title}]({key}.png)" in md
    assert page.count("<div class='figures'>") == 1  # one grid, all figures in it
    readings = {k: figure_reading(k, summary) for k in keys}
    assert "mean AUC is 0.986; the lowest is class 6 Shirt at 0.930" in readings["roc"]
    assert "lowest is class 6 Shirt at 0.720" in readings["precision_recall"]
    assert "highest for class 8 Bag (99.00%)" in readings["confusion"]
    assert "lowest for class 6 Shirt (71.00%)" in readings["confusion"]
    assert "0.0080" in readings["reliability"] and "0.0120 (resnet)" in readings["reliability"]
    assert "cnn4-asha: 2 of 8 trials went past epoch 3" in readings["asha_rungs"]
    for reading in readings.values():
        assert reading in md  # report.md reads the same under each image

    # text from the summary is escaped, never markup
    assert "<b>&</b>" not in page and "&lt;b&gt;&amp;&lt;/b&gt;" in page
    assert "viewport" in page and "grid-template-columns" in page
    assert "<title>tunefuse report hand</title>" in page


def test_report_page_headline_says_when_the_interval_includes_zero():
    summary = hand_made_summary()
    summary["fusion"].update(test_gain=-0.001, test_gain_interval=[-0.004, 0.002])
    head = markdown_of(build(summary, {}).headline)
    assert "includes zero" in head and "-0.10 points" in head
    summary["fusion"]["test"].pop("roc_auc")  # a summary without the areas: no numbers made up
    assert "AUC" not in figure_reading("roc", summary)


def test_report_page_lays_out_figures_on_a_laptop_screen(smoke_pipeline, browser, out_dir):
    from selenium.webdriver.common.by import By

    report = smoke_pipeline.ws / "reports" / "smoke" / "report.html"
    browser.set_window_size(1366, 768)
    browser.get(report.as_uri())
    wait_text(browser, "seed: Model fusion (4 models)")
    headline_box = browser.find_element(By.ID, "headline")
    assert "best member" in headline_box.text and "bootstrap interval" in headline_box.text
    assert "seed's model fusion" in headline_box.text
    first_table = browser.find_element(By.TAG_NAME, "table")
    figures = browser.find_elements(By.CSS_SELECTOR, "figure")
    assert len(figures) >= 4
    assert headline_box.rect["y"] < first_table.rect["y"] < figures[0].rect["y"]
    for figure in figures:
        title = figure.find_element(By.TAG_NAME, "h3").text
        reading = figure.find_element(By.TAG_NAME, "figcaption").text
        assert title in TITLES.values(), title
        assert len(reading) > 20 and reading not in TITLES, reading
    boxes = [f.rect for f in figures]
    assert any(a["y"] == b["y"] and a["x"] != b["x"] for a, b in itertools.pairwise(boxes)), boxes
    width = browser.execute_script("return [document.documentElement.scrollWidth, "
                                   "window.innerWidth]")
    assert width[0] <= width[1], width  # nothing overflows sideways
    browser.save_screenshot(str(out_dir / "report_laptop.png"))
    browser.set_window_size(1366, max(768, browser.execute_script(
        "return document.body.scrollHeight")))
    browser.save_screenshot(str(out_dir / "report_full.png"))


def test_report_says_how_the_fusion_was_fitted_and_scored():
    summary = hand_made_summary()
    md = markdown(build(summary, {}))
    assert "Fusion: **uniform** with temperature scaling, weights [0.5, 0.5]" in md
    assert "TTA" not in md  # a report before --tta, or without it, says nothing of it
    summary["fusion"]["method"], summary["tta"] = "nll", "flip"
    md = markdown(build(summary, {}))
    assert ("Fusion: **nll** (the weights that minimise the fused validation log-loss) with "
            "temperature scaling") in md
    assert "left-right mirror (flip TTA), on validation and test alike" in md
