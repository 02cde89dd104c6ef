"""Executing study notebooks with papermill and building the book with jupyter-book 1.x.

``lus run <study>`` executes ``notebooks/<file>`` into ``book/chapters/<file>``; the book is
then built from those executed copies without re-executing them (``execute_notebooks: off``).
Finished (strategy, seed) runs live in the results store, so a failed or interrupted notebook
loses nothing already computed: the next run reuses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from lus_common.config.paths import PROJECT_ROOT
from lus_common.figures.plots import plotly_js_path
from lus_common.studies import STUDIES, get_study

NOTEBOOKS = PROJECT_ROOT / "notebooks"
BOOK = PROJECT_ROOT / "book"
CHAPTERS = BOOK / "chapters"


def notebook_path(study: str) -> Path:
    """Source notebook of a study.

    Raises:
        KeyError: unknown study (the message lists the known ones).
    """
    return NOTEBOOKS / get_study(study).notebook


def notebook_parameters(study: str) -> dict:
    """The names and defaults of the notebook's tagged ``parameters`` cell."""
    import papermill

    info = papermill.inspect_notebook(str(notebook_path(study)))
    return {name: spec["default"] for name, spec in info.items()}


def run_notebook(
    study: str,
    parameters: dict | None = None,
    profile: str | None = None,
    output: Path | None = None,
    progress: bool = True,
) -> Path:
    """Execute a study notebook with papermill.

    Args:
        study: short study name, e.g. ``"hc18_strategies"``.
        parameters: values for the notebook's parameters cell.
        profile: shorthand for ``parameters["profile"]``.
        output: executed notebook path (default ``book/chapters/<notebook>``).
        progress: show papermill's cell progress bar.

    Returns:
        The executed notebook's path.

    Raises:
        ValueError: a parameter name the notebook does not have.
    """
    import papermill

    source = notebook_path(study)
    params = dict(parameters or {})
    if profile is not None:
        params["profile"] = profile
    known = notebook_parameters(study)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"Unknown parameter(s) {unknown} for study '{study}'. Known: {sorted(known)}"
        )
    output = Path(output) if output is not None else CHAPTERS / source.name
    output.parent.mkdir(parents=True, exist_ok=True)
    # The kernel runs in notebooks/: make relative data and results paths absolute first.
    for var in ("LUS_DATA_DIR", "LUS_RESULTS_DIR"):
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).expanduser().resolve())
    # Execute into a temporary file beside the output and move it into place only on success, so a
    # failed run never replaces a good executed chapter (the book would publish a broken page).
    running = output.with_name(f".{output.stem}.running.ipynb")
    failed = failed_path(output)
    try:
        papermill.execute_notebook(
            str(source),
            str(running),
            parameters=params,
            cwd=str(NOTEBOOKS),
            progress_bar=progress,
            kernel_name="python3",
        )
    except BaseException as exc:
        if running.is_file():
            os.replace(running, failed)
        if not isinstance(exc, papermill.PapermillExecutionError):
            raise
        kept = (
            f"The executed chapter {output} is kept as it was."
            if output.is_file()
            else f"No executed chapter was written to {output}."
        )
        raise RuntimeError(
            f"{source.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}\n"
            f"The partly executed notebook is {failed}. {kept} Finished runs stay in the results "
            "store and are reused next time."
        ) from None
    os.replace(running, output)
    failed.unlink(missing_ok=True)
    return output


def failed_path(output: Path) -> Path:
    """Where a failed execution of ``output`` is kept: ``<stem>.failed.ipynb`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.failed.ipynb")


def build_book(book_dir: Path = BOOK, output_dir: Path | None = None) -> Path:
    """Build the HTML book offline from the executed notebooks.

    Returns:
        The folder with ``index.html``.

    Raises:
        FileNotFoundError: a chapter notebook has not been executed yet.
        RuntimeError: jupyter-book failed (its output is in the message).
    """
    book_dir = Path(book_dir)
    missing = [
        s.notebook for s in STUDIES.values() if not (book_dir / "chapters" / s.notebook).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"Executed notebooks missing in {book_dir / 'chapters'}: {missing}. "
            "Run `lus run <study>` for each, or `lus book`, which runs them all."
        )
    # plotly.js once for the whole book: jupyter-book loads every .js file in _static/ on
    # every page.
    static = book_dir / "_static"
    static.mkdir(exist_ok=True)
    shutil.copyfile(plotly_js_path(), static / "plotly.min.js")
    exe = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    cmd = [exe, "build", str(book_dir), "--builder", "html"]
    if output_dir is not None:
        cmd += ["--path-output", str(output_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"jupyter-book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return Path(output_dir or book_dir) / "_build" / "html"
