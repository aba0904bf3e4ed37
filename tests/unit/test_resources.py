"""Bundled data (sample projects, themes) is found in a checkout and in an install, and the
wheel really carries it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, tower
from tower import resources
from tower.core.project import load_project
from tower.resources import (
    ResourceError,
    demo_project_dir,
    sample_projects_dir,
    themes_dir,
)

JUNK_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", ".mypy_cache"}


def data_files(root: Path) -> set[str]:
    """Every file under root (relative, posix), without bytecode caches."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not JUNK_DIRS & set(p.parts) and p.suffix not in {".pyc", ".pyo"}
    }


def test_checkout_uses_top_level_folders() -> None:
    assert sample_projects_dir() == REPO / "sample_projects"
    assert themes_dir() == REPO / "themes"
    assert demo_project_dir() == REPO / "sample_projects" / "tax_return"


def test_demo_project_is_real_and_valid() -> None:
    demo = demo_project_dir()
    assert (demo / "tower.toml").is_file()
    assert list(demo.glob("households/*/*.txt"))
    assert load_project(demo).name == "tax_return"


def test_installed_layout_uses_package_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed, tower/ sits in site-packages with the data inside it; no pyproject."""
    package = tmp_path / "site-packages" / "tower"
    (package / "sample_projects" / "tax_return").mkdir(parents=True)
    (package / "sample_projects" / "tax_return" / "tower.toml").write_text("", encoding="utf-8")
    (package / "themes").mkdir()
    monkeypatch.setattr(resources, "_PACKAGE", package)
    assert sample_projects_dir() == package / "sample_projects"
    assert themes_dir() == package / "themes"
    assert demo_project_dir() == package / "sample_projects" / "tax_return"


def test_broken_install_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "_PACKAGE", tmp_path / "tower")
    with pytest.raises(ResourceError, match="sample_projects folder is missing"):
        sample_projects_dir()


def _copy_source(dest: Path) -> Path:
    """The working tree without VCS data, caches or build leftovers, so the build cannot
    touch the checkout and stale build/ output cannot leak in."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "*.db*", *JUNK_DIRS
    )
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout exactly as `pip wheel .` builds it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_source(tmp / "src")
    out = tmp / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("tower-*.whl")
    return built


def test_wheel_carries_code_sample_projects_and_themes(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("sample_projects", "themes"):
        expected = {f"tower/{folder}/{rel}" for rel in data_files(REPO / folder)}
        assert expected, folder
        assert expected <= names, sorted(expected - names)
    modules = {f"tower/{rel}" for rel in data_files(REPO / "tower")}
    assert modules <= names, sorted(modules - names)
    assert "tower/sample_projects/tax_return/tower.toml" in names
    assert any(n.startswith("tower/sample_projects/tax_return/households/") for n in names)
    assert {"tower/themes/dark.toml", "tower/themes/light.toml"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_unpacked_wheel_finds_its_own_data(wheel: Path, tmp_path: Path) -> None:
    """Run from an unpacked wheel (what a regular install puts in site-packages), in a
    folder far from the checkout: the data must be the installed copies."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import tower.resources as r, tower.ui.themes as t\n"
        "print(r.demo_project_dir()); print(r.themes_dir())\n"
        "themes, errors = t.load_themes([r.themes_dir()]); print(sorted(themes), errors)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "TOWER_CONFIG_DIR": str(tmp_path / "cfg")}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    demo, themes, loaded = proc.stdout.splitlines()
    assert Path(demo) == site / "tower" / "sample_projects" / "tax_return"
    assert Path(themes) == site / "tower" / "themes"
    assert loaded == "['tower-dark', 'tower-high-contrast', 'tower-light'] []"
    check = tower("check", demo, cwd=tmp_path, env=env)  # env's PYTHONPATH: the wheel's
    assert check.returncode == 0, check.stderr
    assert "ok" in check.stdout
