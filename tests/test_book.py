"""The book builds offline from a papermill-executed chapter, and its plotly figures render in
headless Chromium with no network."""

import re
import shutil
import subprocess

import pytest

from lus_common.app import runner
from lus_common.studies import REGISTRY, STUDIES


def get_study_kind(chapter: str) -> str:
    return next(s.kind for s in REGISTRY.values() if s.chapter == chapter)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    book = root / "book"
    shutil.copytree(runner.BOOK, book, ignore=shutil.ignore_patterns("_build", "*.ipynb"))
    mp = pytest.MonkeyPatch()
    mp.setenv("LUS_RESULTS_DIR", str(root / "results"))
    for study in STUDIES.values():  # every chapter that executes, as the registry lists them
        runner.run_notebook(
            study.name,
            study.smoke,
            profile="smoke",
            output=book / "chapters" / study.notebook,
            progress=False,
        )
    mp.undo()
    return runner.build_book(book)


def test_book_pages_exist(built_book):
    pages = [f"chapters/{study.chapter}.html" for study in REGISTRY.values()]
    for page in ["index.html", "intro.html", *pages, "appendix/performance.html"]:
        assert (built_book / page).is_file(), page


@pytest.mark.parametrize("chapter", [s.chapter for s in STUDIES.values()])
def test_plotly_is_loaded_once_from_the_book_not_fetched(built_book, chapter):
    html = (built_book / "chapters" / f"{chapter}.html").read_text()
    assert "Plotly.newPlot" in html
    if get_study_kind(chapter) != "appendix":  # the studies run on phantoms by default
        assert "SYNTHETIC phantom" in html
    assert not re.search(r"<script[^>]+src=\"https?://", html), (
        "no script may come from the network"
    )
    # plotly.js is not in the page: the page loads the book's one copy.
    assert "plotly.js v" not in html and html.count("Plotly.newPlot") >= 1
    assert re.search(r'<script src="\.\./_static/plotly\.min\.js', html)
    shared = built_book / "_static" / "plotly.min.js"
    assert shared.read_bytes().startswith(b"/**\n* plotly.js v")


def test_build_refuses_missing_chapter(tmp_path):
    book = tmp_path / "book"
    shutil.copytree(runner.BOOK, book, ignore=shutil.ignore_patterns("_build", "*.ipynb"))
    with pytest.raises(FileNotFoundError, match="lus run"):
        runner.build_book(book)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
@pytest.mark.parametrize(
    "chapter, figures",
    [
        ("04_hc18_strategies", 6),
        ("00_phantoms", 15),
        ("03_cxr_overfitting", 6),
        ("A1_pretrained_weights", 1),
        ("05_dense_sparse", 4),
        ("02_v_vs_x_unet", 3),
        ("01_data_reduction", 4),
    ],  # fmt: skip
)
def test_figures_render_offline_in_chromium(built_book, tmp_path, chapter, figures):
    page = (built_book / "chapters" / f"{chapter}.html").as_uri()
    dom = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            page,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    # plotly draws each figure as an <svg class="main-svg"> (or more)
    assert dom.count('class="main-svg"') >= figures, "plotly figures did not render"
    shot = built_book / f"{chapter}.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--virtual-time-budget=20000",
            "--window-size=1280,4000",
            f"--screenshot={shot}",
            page,
        ],
        capture_output=True,
        timeout=180,
    )
    assert shot.is_file() and shot.stat().st_size > 50_000
