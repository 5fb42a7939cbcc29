"""Build script: the Python package plus the C++/CUDA extension ``cnnfast._C``.

Install (torch must be importable at build time, hence no build isolation):

    pip install torch            # first, the build you want (CPU or CUDA)
    pip install --no-build-isolation -e .

What gets built:
    - every C++ source under csrc/ (*.cpp), always: the op schemas, the CPU kernels, and the emulator
      that runs the CUDA kernels' block programs on the CPU (backend "emulated_cuda");
    - every CUDA source under csrc/ (*.cu) when torch was built with CUDA and nvcc is found, for sm_80
      and sm_90 plus PTX for newer GPUs.

Settings, from the environment:
    CNNFAST_CPU_ONLY=1          skip the CUDA kernels even where they could be built
    CNNFAST_CUDA_ARCHS="80;90"  SASS architectures, sm_80 or newer (PTX is added for the last one)
    CUDA_HOME                   the toolkit; if unset, the folder nvcc reports as TOP (nvcc -dryrun), so
                                a wrapper script named nvcc on PATH still leads to the real toolkit
    MAX_JOBS                    parallel compile jobs (default: CPUs, capped by memory at ~2 GiB a job)
    CNNFAST_NO_EXTENSION=1      install the pure-Python package only (backends "triton" and "torch")
    CNNFAST_REQUIRE_EXTENSION=1 fail, rather than fall back to pure Python, when the extension cannot build

Without torch at build time (pip's default build isolation) the package installs without its extension
and says how to get it; failures print a sentence, not a traceback.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _say(msg):
    print(f"cnnfast setup: {msg}", file=sys.stderr, flush=True)


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _give_up(msg):
    """No extension: fail when CNNFAST_REQUIRE_EXTENSION is set, else build the pure-Python package."""
    if _flag("CNNFAST_REQUIRE_EXTENSION"):
        _say(msg)
        sys.exit(1)
    _say(msg + " Installing the pure-Python package (backends 'triton' and 'torch' only).")
    return None


def _nvcc_toolkit():
    """The CUDA toolkit folder: $CUDA_HOME, else the TOP that `nvcc -dryrun` reports, else None."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        for guess in ("/usr/local/cuda/bin/nvcc",):
            if os.path.exists(guess):
                nvcc = guess
                break
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "x.cu")
        open(src, "w").close()
        try:
            res = subprocess.run([nvcc, "-dryrun", "-c", src, "-o", os.path.join(tmp, "x.o")],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    m = re.search(r"^#\$ TOP=(.*)$", res.stdout + res.stderr, re.M)
    if not m:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return os.path.normpath(m.group(1).strip())


def _sources(ending):
    """The files under csrc/ whose names end in `ending`, as paths relative to this folder, sorted."""
    found = []
    for root, _, files in os.walk(os.path.join(HERE, "csrc")):
        found += [os.path.relpath(os.path.join(root, f), HERE) for f in files if f.endswith(ending)]
    return sorted(found)


def _max_jobs():
    if os.environ.get("MAX_JOBS"):
        return
    jobs = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        jobs = max(1, min(jobs, int(mem_gib // 2)))
    except (ValueError, OSError, AttributeError):
        pass
    os.environ["MAX_JOBS"] = str(jobs)


def _extension():
    if _flag("CNNFAST_NO_EXTENSION"):
        _say("CNNFAST_NO_EXTENSION is set: not building cnnfast._C.")
        return None
    want_cuda = not _flag("CNNFAST_CPU_ONLY")
    toolkit = _nvcc_toolkit() if want_cuda else None
    if toolkit:
        os.environ["CUDA_HOME"] = toolkit  # read by torch.utils.cpp_extension at import
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:
        return _give_up(f"torch is not importable at build time ({e}); to build the C++/CUDA kernels, install "
                        "torch first and then run: pip install --no-build-isolation -e .")
    _max_jobs()
    cuda = want_cuda and torch.version.cuda is not None and toolkit is not None
    if want_cuda and torch.version.cuda is None:
        _say(f"torch {torch.__version__} has no CUDA: building the CPU kernels only.")
    elif want_cuda and toolkit is None:
        _say("nvcc not found (set CUDA_HOME or put nvcc on PATH): building the CPU kernels only.")
    if cuda and not os.path.exists(os.path.join(toolkit, "bin", "nvcc")):
        _say(f"CUDA_HOME={toolkit} has no bin/nvcc: building the CPU kernels only.")
        cuda = False

    # The CPU kernels, and the emulator that runs the CUDA kernels' block programs on the CPU (tests).
    sources = _sources(".cpp")
    cxx = ["-O3", "-Wno-psabi", "-fno-math-errno"]
    link = []
    define_macros = []
    if sys.platform == "win32":
        cxx = ["/O2", "/openmp"]
    elif sys.platform.startswith("linux"):
        # at::parallel_for is an inline header: it runs serially unless this extension itself is
        # compiled with OpenMP (the same libgomp torch links), and the CPU kernels would use one core.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    kwargs = dict(name="cnnfast._C", sources=sources, include_dirs=[os.path.join(HERE, "csrc")],
                  extra_link_args=link)
    if cuda:
        archs = [a.strip().replace(".", "") for a in os.environ.get("CNNFAST_CUDA_ARCHS", "80;90").split(";") if a.strip()]
        if not archs or not all(a.isdigit() and int(a) >= 80 for a in archs):
            _say(f"CNNFAST_CUDA_ARCHS={os.environ.get('CNNFAST_CUDA_ARCHS')!r}: the CUDA kernels need sm_80 or newer "
                 "(bfloat16 and TF32 tensor cores); give architectures like \"80;90\".")
            sys.exit(1)
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        sources += _sources(".cu")
        define_macros.append(("CNNFAST_WITH_CUDA", None))
        # CUDA 13 wheels of torch ship the math libraries' headers (cusparse.h, ...) under
        # site-packages/nvidia/*/include rather than in the toolkit: let torch's headers find them.
        nvidia = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
        if os.path.isdir(nvidia):
            kwargs["include_dirs"] += sorted(os.path.join(nvidia, d, "include") for d in os.listdir(nvidia)
                                             if os.path.isdir(os.path.join(nvidia, d, "include")))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", *gencode]
        _say(f"building the CPU and CUDA kernels (toolkit {toolkit}, sm_{', sm_'.join(archs)} + PTX "
             f"compute_{archs[-1]}, MAX_JOBS={os.environ['MAX_JOBS']}).")
        ext = cpp_extension.CUDAExtension(**kwargs, define_macros=define_macros,
                                          extra_compile_args={"cxx": cxx, "nvcc": nvcc})
    else:
        _say(f"building the CPU kernels (MAX_JOBS={os.environ['MAX_JOBS']}).")
        ext = cpp_extension.CppExtension(**kwargs, define_macros=define_macros, extra_compile_args={"cxx": cxx})
    if not cpp_extension.is_ninja_available():
        _say("ninja not found: compiling one file at a time (pip install ninja for a parallel build).")
    return ext, cpp_extension.BuildExtension.with_options(use_ninja=cpp_extension.is_ninja_available())


built = _extension()
if built is None:
    setup()
else:
    ext, build_ext = built
    setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
