"""``cnnfast build-extension``: the build it runs (torch.utils.cpp_extension stubbed: a real build takes
minutes), and how the package finds, loads or refuses an extension in its cache folder. The loading
cases run in a fresh interpreter where the package's own ``cnnfast._C`` cannot be imported."""
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnfast
from cnnfast import build, cli

# The extension this interpreter loads: an editable checkout may also hold one built by another Python
# for another torch (CI builds both), which would not load here.
PACKAGED = [p for p in (Path(cnnfast.__file__).parent / f"_C{suffix}"
                        for suffix in importlib.machinery.EXTENSION_SUFFIXES) if p.is_file()]


def _fresh(code: str, cache: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter without the packaged extension, cache folder ``cache``."""
    prelude = "import sys; sys.modules['cnnfast._C'] = None\n"
    env = dict(os.environ, CNNFAST_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True,
                          timeout=120)


ASK_CPU = """
import torch, cnnfast.functional as cf
try:
    cf.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), backend="cpu")
except RuntimeError as e:
    print("ERROR:", e)
"""


def test_missing_extension_error_names_the_build_command(tmp_path):
    res = _fresh(ASK_CPU, tmp_path)
    assert res.returncode == 0, res.stderr
    assert ("ERROR: conv2d: backend 'cpu' is not available: cnnfast was installed without its compiled kernels "
            "(cnnfast._C); run `cnnfast build-extension`") in res.stdout


def test_extension_built_for_another_torch_is_refused_with_a_sentence(tmp_path):
    other = tmp_path / "extension" / "torch-0.0.1"
    other.mkdir(parents=True)
    (other / build.STAMP).write_text(json.dumps({"torch": "0.0.1", "cuda": False}))
    (other / "_C.so").write_bytes(b"not a library")
    res = _fresh(ASK_CPU, tmp_path)
    assert res.returncode == 0, res.stderr
    assert (f"the extension in cnnfast's cache was built for torch 0.0.1, not for the installed torch "
            f"{torch.__version__}; run `cnnfast build-extension`") in res.stdout
    assert "undefined symbol" not in res.stdout + res.stderr


@pytest.mark.skipif(not PACKAGED, reason="cnnfast._C is not built here (nothing to put in the cache)")
def test_extension_in_the_cache_is_loaded_when_the_package_has_none(tmp_path):
    folder = tmp_path / "extension" / f"torch-{torch.__version__}"
    folder.mkdir(parents=True)
    shutil.copy(PACKAGED[0], folder / "_C.so")
    (folder / build.STAMP).write_text(json.dumps({"torch": torch.__version__, "cuda": False}))
    res = _fresh("""
import torch, cnnfast, cnnfast._C, cnnfast.functional as cf, torch.nn.functional as F
print(cnnfast._C.__file__)
print(cnnfast.backends.available("cpu"))
x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
print(torch.allclose(cf.conv2d(x, w, backend="cpu"), F.conv2d(x, w), atol=1e-5))
""", tmp_path)
    assert res.returncode == 0, res.stderr
    file, names, same = res.stdout.split("\n")[:3]
    assert Path(file).parent == folder
    assert "'cpu'" in names and same == "True"


def test_build_compiles_the_sources_into_the_cache_folder(tmp_path, monkeypatch, capsys):
    from torch.utils import cpp_extension
    calls = []

    def load(**kwargs):
        calls.append(kwargs)
        Path(kwargs["build_directory"], "_C.so").write_bytes(b"")
    monkeypatch.setenv("CNNFAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    assert cli.main(["build-extension", "--cpu-only", "--quiet"]) == 0
    (kwargs,) = calls
    folder = tmp_path / "extension" / f"torch-{torch.__version__}"
    assert Path(kwargs["build_directory"]) == folder
    assert json.loads((folder / build.STAMP).read_text()) == {"torch": torch.__version__, "cuda": False}
    sources = {Path(s).name for s in kwargs["sources"]}
    assert "ops.cpp" in sources and not any(s.endswith(".cu") for s in sources)
    assert kwargs["with_cuda"] is False and kwargs["name"] == "_C"
    out = capsys.readouterr().out
    assert "compiling" in out and f"done: cnnfast loads the extension from {folder}" in out


def test_build_failures_are_one_sentence(tmp_path, monkeypatch, capsys):
    from torch.utils import cpp_extension
    monkeypatch.setenv("CNNFAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    assert build.main(["--cpu-only"]) == 1
    assert "error: ninja is not installed: pip install ninja" in capsys.readouterr().err
    monkeypatch.setattr(build, "sources_dir", lambda: None)
    assert build.main([]) == 1
    assert "the C++ sources (csrc/) are not part of this installation" in capsys.readouterr().err


def test_python_dash_m_cnnfast_build_runs():
    res = subprocess.run([sys.executable, "-m", "cnnfast.build", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "--cpu-only" in res.stdout
