"""Build the C++/CUDA extension ``cnnfast._C`` after installation: ``cnnfast build-extension`` or
``python -m cnnfast.build``.

For when pip installed cnnfast without it (``pip install -e .`` under pip's default build isolation
cannot see torch, so setup.py skips the extension). The sources (``csrc/`` of the checkout cnnfast runs
from) are compiled for the torch that is installed, with ``torch.utils.cpp_extension`` and ninja, into
cnnfast's cache folder, one folder per torch version; ``cnnfast.backends`` loads the extension from there
when the package has none of its own, and refuses, with a sentence, one built for another torch.

Settings (as setup.py's): ``CNNFAST_CUDA_ARCHS`` ("80;90"), ``MAX_JOBS``, ``CUDA_HOME``; the cache folder
is ``$CNNFAST_CACHE_DIR``, else ``$XDG_CACHE_HOME/cnnfast``, else ``~/.cache/cnnfast``.
"""
import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["cache_dir", "extension_dir", "build", "main"]

STAMP = "build-info.json"


def cache_dir() -> Path:
    """cnnfast's cache folder (not created)."""
    if os.environ.get("CNNFAST_CACHE_DIR"):
        return Path(os.environ["CNNFAST_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnnfast"


def extension_dir(torch_version: str) -> Path:
    """Where the extension built for ``torch_version`` lives."""
    return cache_dir() / "extension" / f"torch-{torch_version}"


def sources_dir() -> Path:
    """The checkout's csrc/ (the package's parent folder), or None in an installation without it."""
    csrc = Path(__file__).resolve().parent.parent / "csrc"
    return csrc if (csrc / "ops.cpp").is_file() else None


def _say(msg: str) -> None:
    print(f"cnnfast build-extension: {msg}", flush=True)


def build(*, cpu_only: bool = False, verbose: bool = True) -> Path:
    """Compile the extension for the installed torch into ``extension_dir``; return the folder.
    Raises RuntimeError with a sentence when it cannot."""
    import torch
    from torch.utils import cpp_extension

    csrc = sources_dir()
    if csrc is None:
        raise RuntimeError("the C++ sources (csrc/) are not part of this installation: install cnnfast from a "
                           "source checkout (pip install --no-build-isolation -e .) to build its extension")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed: pip install ninja, then run cnnfast build-extension again")
    cuda = not cpu_only and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if not cpu_only and not cuda:
        _say("no CUDA toolkit for this torch (torch.version.cuda or nvcc missing): building the CPU kernels only")
    sources = sorted(str(p) for p in csrc.rglob("*.cpp"))
    cxx = ["-O3", "-Wno-psabi", "-fno-math-errno", "-fopenmp"]
    cuda_flags = []
    if cuda:
        sources += sorted(str(p) for p in csrc.rglob("*.cu"))
        archs = [a.strip().replace(".", "") for a in os.environ.get("CNNFAST_CUDA_ARCHS", "80;90").split(";")
                 if a.strip()]
        cuda_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-DCNNFAST_WITH_CUDA",
                      *(f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs),
                      f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
        cxx.append("-DCNNFAST_WITH_CUDA")
    # CUDA 13 wheels of torch ship the math libraries' headers under site-packages/nvidia/*/include.
    nvidia = Path(torch.__file__).resolve().parent.parent / "nvidia"
    includes = [str(csrc)] + (sorted(str(d / "include") for d in nvidia.iterdir() if (d / "include").is_dir())
                              if cuda and nvidia.is_dir() else [])
    out = extension_dir(torch.__version__)
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).unlink(missing_ok=True)
    _say(f"compiling {len(sources)} files for torch {torch.__version__} "
         f"({'CPU and CUDA' if cuda else 'CPU'} kernels) into {out}; this takes minutes")
    try:
        cpp_extension.load(name="_C", sources=sources, extra_include_paths=includes, extra_cflags=cxx,
                           extra_cuda_cflags=cuda_flags, extra_ldflags=["-fopenmp"], build_directory=str(out),
                           with_cuda=cuda, is_python_module=True, verbose=verbose)
    except Exception as e:  # the compiler's output is above; say what failed in one line
        raise RuntimeError(f"the build failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           "the compiler's messages are above") from None
    (out / STAMP).write_text(json.dumps({"torch": torch.__version__, "cuda": cuda}))
    _say(f"done: cnnfast loads the extension from {out} from now on")
    return out


def main(argv=None, prog="python -m cnnfast.build") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Compile cnnfast's C++/CUDA extension (cnnfast._C) "
                                     "for the installed torch into cnnfast's cache folder.")
    parser.add_argument("--cpu-only", action="store_true", help="build only the CPU kernels (and the emulator)")
    parser.add_argument("--quiet", action="store_true", help="do not print the compiler's commands")
    args = parser.parse_args(argv)
    try:
        build(cpu_only=args.cpu_only, verbose=not args.quiet)
    except RuntimeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
