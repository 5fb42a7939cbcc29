"""The package list in pyproject.toml names every subpackage, so a wheel (a non-editable install) ships
all of cnnfast, not only what an editable install happens to find."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The import name of each top-level source folder (pyproject's [tool.setuptools.package-dir]).
FOLDERS = {"cnnfast": "cnnfast", "kernels": "cnnfast.kernels", "bench": "cnnfast.bench"}


def _listed_packages():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    match = re.search(r"^packages = \[(.*?)\]", text, re.M | re.S)
    assert match, "pyproject.toml has no [tool.setuptools] packages list"
    return set(re.findall(r'"([\w.]+)"', match.group(1)))


def _packages_on_disk():
    found = set()
    for folder, name in FOLDERS.items():
        for path, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "results")]
            if "__init__.py" in files:
                rel = os.path.relpath(path, os.path.join(ROOT, folder))
                found.add(name if rel == "." else name + "." + rel.replace(os.sep, "."))
    return found


def test_pyproject_lists_every_subpackage():
    assert _packages_on_disk() == _listed_packages()
