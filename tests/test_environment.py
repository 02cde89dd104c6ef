"""pyproject.toml and environment.yml list the same packages."""

import re
import tomllib

import yaml

from lus_common.config.paths import PROJECT_ROOT


def _norm(spec: str) -> str:
    return re.sub(r"\s+", "", spec).lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    extras = [s for group in project["optional-dependencies"].values() for s in group]
    wanted = {_norm(s) for s in project["dependencies"] + extras}
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_norm(s.split("#")[0]) for s in pip if not s.startswith("-e")}
    assert listed == wanted


def test_jupyter_book_is_pinned_below_2():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert any(_norm(d) == "jupyter-book>=1,<2" for d in project["dependencies"])
