"""Where tower's bundled data and the user's config live, as real folders on disk.

`sample_projects/` and `themes/` sit at the top of the repository. A wheel (or a non-editable
`pip install .`) carries copies of them as `tower/sample_projects` and `tower/themes` (see
setup.py). From a source checkout or an editable install the checkout's own folders win, so
edits show up at once; otherwise the installed copies are used. Both are plain directories
(tower copies workspaces out of them), never zip members.

User configuration (keys.toml, themes/) lives in `config_dir()`: `$TOWER_CONFIG_DIR` when it
is set, else the platform's user config folder for "tower".
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CONFIG_ENV = "TOWER_CONFIG_DIR"
DEMO_PROJECT = "tax_return"

_PACKAGE = Path(__file__).resolve().parent


class ResourceError(FileNotFoundError):
    """Bundled data that should ship with tower cannot be found (a broken install)."""


def _checkout_root() -> Path | None:
    """The repository root when this module runs from a source checkout (editable or not)."""
    root = _PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "sample_projects").is_dir():
        return root
    return None


def _data_dir(name: str) -> Path:
    root = _checkout_root()
    candidates = ([root / name] if root else []) + [_PACKAGE / name]
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise ResourceError(f"tower's {name} folder is missing (looked in {tried}); reinstall tower")


def sample_projects_dir() -> Path:
    """The folder holding the bundled sample projects, one sub-folder each."""
    return _data_dir("sample_projects")


def themes_dir() -> Path:
    """The folder holding the bundled colour themes (`*.toml`)."""
    return _data_dir("themes")


def demo_project_dir() -> Path:
    """The project `tower` opens when started with no arguments (the tax_return sample)."""
    path = sample_projects_dir() / DEMO_PROJECT
    if not (path / "tower.toml").is_file():
        raise ResourceError(f"{path / 'tower.toml'}: demo project is missing; reinstall tower")
    return path


def config_dir() -> Path:
    """The user's tower config folder: `$TOWER_CONFIG_DIR`, else the platform default.

    The folder is not created; readers treat a missing folder as "no user config".
    """
    override = os.environ.get(CONFIG_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_config_dir("tower", appauthor=False))
