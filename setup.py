"""Packaging glue that pyproject.toml cannot express on its own.

The sample projects and themes live at the top of the repository (`sample_projects/`,
`themes/`) but must ship inside the wheel so an installed `tower` can open its demo from any
folder. They are mapped into the package as `tower.sample_projects` and `tower.themes`, and
every file under them is package data. Metadata, dependencies and scripts stay in
pyproject.toml; tower/resources.py finds the data in a checkout or an install.
"""

from setuptools import find_namespace_packages, setup

DATA = {"tower.sample_projects": "sample_projects", "tower.themes": "themes"}
JUNK = ["**/__pycache__/*", "*.py[co]", "**/*.py[co]"]

setup(
    # Namespace discovery, so a sub-package that lacks an __init__.py still ships.
    packages=[
        *find_namespace_packages(include=["tower", "tower.*"], exclude=["*.__pycache__"]),
        *DATA,
    ],
    package_dir=DATA,
    package_data={"tower": ["py.typed"], **{pkg: ["**/*"] for pkg in DATA}},
    exclude_package_data={pkg: JUNK for pkg in DATA},
    include_package_data=False,
)
