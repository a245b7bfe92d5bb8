"""The HTML report in a real browser: headless Chromium (Debian's package, apt-installed when missing) loads
`reports/summary.html` of a small study built from eval files (tests/unit/test_report.py), every plot decodes
and is laid out, and the page is not blank. Controls show the checks fail on a broken image and a blank page."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from tests.apt import Unavailable, ensure
from tests.browser import BINARIES, CHECK_IMAGES, PACKAGES, Chromium
from tests.unit.test_report import study  # noqa: F401 - the report's small study (a fixture)
from workflow import paths, stages


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    try:
        ensure(BINARIES, PACKAGES)
    except Unavailable as err:
        pytest.skip(f"Chromium cannot be installed here: {err}")
    with Chromium(tmp_path_factory.mktemp("chromium-profile")) as browser:
        yield browser


def ink(png: bytes) -> tuple[float, int, tuple[int, int]]:
    """Fraction of pixels that are not near-white, distinct colours, and size of a screenshot."""
    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    rgb = np.asarray(img).reshape(-1, 3)
    return float((rgb.min(axis=1) < 235).mean()), len(np.unique(rgb, axis=0)), img.size


def test_report_renders_with_every_plot(study, chromium, tmp_path):  # noqa: F811
    stages.call(study, "report")
    page = (Path(paths.report_dir()) / "summary.html").resolve()
    got = chromium.open(page.as_uri(), CHECK_IMAGES)
    (tmp_path / "summary.png").write_bytes(got["screenshot"])  # to look at when it fails
    images, text = got["value"]["images"], got["value"]["text"]
    assert [i["alt"] for i in images] == ["training loss", "held-out bpb", "merges vs inputs", "loss vs compute"], images
    for img in images:
        assert img["complete"] and img["width"] >= 200 and img["height"] >= 150 and img["shown"] > 100, img
    assert "Study report" in text and "decay-a" in text and "Science check" in text
    share, colours, (width, height) = ink(got["screenshot"])
    assert height >= got["value"]["height"] > 900, "the screenshot holds the whole page"
    assert share > 0.03 and colours > 50, f"a blank-looking page: {share:.1%} inked, {colours} colours"


def test_checks_catch_a_broken_image_and_a_blank_page(study, chromium, tmp_path):  # noqa: F811
    stages.call(study, "report")
    html = (Path(paths.report_dir()) / "summary.html").read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r"base64,[A-Za-z0-9+/]{200}", "base64,AAAA" + "B" * 196, html, count=1))
    images = chromium.open(broken.as_uri(), CHECK_IMAGES)["value"]["images"]
    assert [img["width"] > 0 for img in images].count(False) == 1
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    got = chromium.open(blank.as_uri(), CHECK_IMAGES)
    assert got["value"]["images"] == [] and ink(got["screenshot"])[0] < 0.001
