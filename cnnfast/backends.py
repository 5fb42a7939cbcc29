"""The backend registry: which kernels run an op, and the process-wide default.

Backends:
    "triton"  Triton kernels (``cnnfast.kernels``): CUDA tensors, or CPU tensors under the Triton
              interpreter (``TRITON_INTERPRET=1`` set before ``triton`` is imported).
    "cuda"    the C++ extension's CUDA kernels (``cnnfast._C``), when it was built with CUDA.
    "cpu"     the C++ extension's CPU kernels (``cnnfast._C``).
    "torch"   stock PyTorch: the reference every other backend is tested against.
    "emulated_cuda"
              the "cuda" backend's kernels (their block programs) run on CPU tensors by the
              extension's emulator, thread by thread: slow, exact to the CUDA kernels' logic. It
              lets the test suite, and anyone changing a CUDA kernel, check it without a GPU.
    "auto"    the fastest, by measurement (``cnnfast.tune``): for each case and direction every
              backend that runs on the tensor's device, stock PyTorch included, is checked and
              timed once, and stock PyTorch is kept unless a kernel beats it; importing cnnfast never
              makes a layer slower. Dtypes no kernel implements (float64, say) run on "torch". With
              ``CNNFAST_TUNE=0`` "auto" is the first available kernel backend, unmeasured.

``backend=None`` in the public API means the current default: ``use(name)`` sets it (and restores
the previous one when used as a context manager); it starts as ``$CNNFAST_BACKEND`` or "auto".
"""
import importlib
import importlib.util
import os

import torch

NAMES = ("triton", "cuda", "cpu", "torch", "auto", "emulated_cuda")

# The dtypes the hand-written kernels implement; anything else runs on "torch" under "auto".
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# The backends "auto" chooses among, per device type; unmeasured (CNNFAST_TUNE=0), the first available.
_AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown cnnfast backend {name!r}; expected one of {', '.join(map(repr, NAMES))}")
    return name


_default = _check_name(os.environ.get("CNNFAST_BACKEND", "auto") or "auto")


class use:
    """Set the default backend; as a context manager, restore the previous one on exit.

    >>> cnnfast.backends.use("triton")          # from now on
    >>> with cnnfast.backends.use("torch"):     # only inside the block
    ...     y = cnnfast.functional.conv2d(x, w)
    """

    def __init__(self, name: str):
        global _default
        self._previous = _default
        _default = _check_name(name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _default
        _default = self._previous
        return False


def default() -> str:
    """The backend that ``backend=None`` currently means."""
    return _default


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


# Why the extension is missing (a sentence), or None.
_EXTENSION_PROBLEM = None


def _load_extension():
    """cnnfast._C from the package, else the one ``cnnfast build-extension`` put in the cache folder for
    this torch; None (and ``_EXTENSION_PROBLEM`` says why) when neither loads."""
    global _EXTENSION_PROBLEM
    try:
        return importlib.import_module("cnnfast._C")
    except ImportError as e:
        # An "undefined symbol" here means it was built against another torch.
        packaged = None if "No module named" in str(e) or "import of cnnfast._C halted" in str(e) else str(e)
    import json
    import sys

    import torch

    from .build import STAMP, cache_dir, extension_dir
    folder = extension_dir(torch.__version__)
    built = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        stamp = None
    if built and stamp is not None and stamp.get("torch") == torch.__version__:
        spec = importlib.util.spec_from_file_location("cnnfast._C", built[0])
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ImportError as e:
            _EXTENSION_PROBLEM = f"the extension in {folder} does not load ({e})"
            return None
        sys.modules["cnnfast._C"] = module
        sys.modules["cnnfast"]._C = module
        return module
    others = sorted(p.name[len("torch-"):] for p in (cache_dir() / "extension").glob("torch-*")
                    if (p / STAMP).is_file()) if (cache_dir() / "extension").is_dir() else []
    if packaged is not None:
        _EXTENSION_PROBLEM = (f"cnnfast._C does not load with torch {torch.__version__} (built for another "
                              f"torch? {packaged.splitlines()[0]})")
    elif others:
        _EXTENSION_PROBLEM = (f"the extension in cnnfast's cache was built for torch {', '.join(others)}, "
                              f"not for the installed torch {torch.__version__}")
    else:
        _EXTENSION_PROBLEM = "cnnfast was installed without its compiled kernels (cnnfast._C)"
    return None


# Looked up once, at import: resolve() runs inside torch.compile's graphs, and dynamo cannot trace
# importlib (torch 2.11's cannot even trace importlib.util.find_spec; 2.14's folds it).
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_EXTENSION = _load_extension()
# Which of its kernels it has ("cpu", "cuda"), also fixed at import for the same reason.
_EXTENSION_HAS = {name: bool(_EXTENSION is not None and getattr(_EXTENSION, f"has_{name}", lambda: False)())
                  for name in ("cpu", "cuda")}
_EXTENSION_HAS["emulated_cuda"] = _EXTENSION is not None and hasattr(_EXTENSION, "emulated_cuda")


def _extension():
    """The compiled extension ``cnnfast._C``, or None when the package was installed without it."""
    return _EXTENSION


def _why_unavailable(name: str, device: torch.device):
    """None if backend ``name`` can run on ``device``, else a sentence saying why not."""
    if name == "torch":
        return None
    if name == "triton":
        if not _HAS_TRITON:
            return "backend 'triton' needs the triton package, which is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and _interpreting():
            return None
        return (f"backend 'triton' runs on CUDA tensors; on a {device.type} tensor it runs only under the "
                "Triton interpreter (set TRITON_INTERPRET=1 before triton is imported)")
    if name in ("cuda", "cpu"):
        if device.type != name:
            return f"backend {name!r} runs on {name} tensors, not on a {device.type} tensor"
        if not _EXTENSION_HAS[name]:
            if _EXTENSION is not None:
                return (f"backend {name!r} is not available: cnnfast._C was built without its {name.upper()} "
                        "kernels" + (" or no CUDA device is available" if name == "cuda" else ""))
            return f"backend {name!r} is not available: {_EXTENSION_PROBLEM}; run `cnnfast build-extension`"
        return None
    if name == "emulated_cuda":
        if device.type != "cpu":
            return f"backend 'emulated_cuda' runs the CUDA kernels on cpu tensors, not on a {device.type} tensor"
        if not _EXTENSION_HAS[name]:
            return f"backend 'emulated_cuda' is not available: {_EXTENSION_PROBLEM}; run `cnnfast build-extension`"
        return None
    raise AssertionError(name)


def available(device="cpu") -> list:
    """The backends that can run on ``device`` here, fastest first ("torch" always last)."""
    device = torch.device(device)
    order = _AUTO_ORDER.get(device.type, ("torch",))
    names = [n for n in order if _why_unavailable(n, device) is None]
    # Correct, never fast (never chosen by "auto"): the Triton interpreter and the CUDA emulator.
    for slow in ("triton", "emulated_cuda"):
        if device.type == "cpu" and slow not in names and _why_unavailable(slow, device) is None:
            names.insert(len(names) - 1, slow)
    return names


def resolve(backend, op: str, tensor: torch.Tensor) -> str:
    """The backend that runs ``op`` on ``tensor``: ``backend`` or the default, checked. "auto" stays
    "auto" where a kernel backend can run the case and the tuner chooses per call (else it is the
    heuristic's backend, or "torch").

    An explicitly named backend that cannot run the case raises; "auto" falls back to "torch".
    """
    name = _check_name(_default if backend is None else backend)
    device = tensor.device
    if name == "auto":
        if tensor.dtype not in KERNEL_DTYPES:
            return "torch"
        for candidate in _AUTO_ORDER.get(device.type, ()):
            if _why_unavailable(candidate, device) is None:
                # Measured per case and direction by the tuner, unless measuring is off.
                return candidate if candidate == "torch" or not tune.enabled() else "auto"
        return "torch"
    if name == "torch":
        return name
    if tensor.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: backend {name!r} supports float32, float16 and bfloat16, not {tensor.dtype}; "
                        "use backend='torch' or 'auto'")
    why = _why_unavailable(name, device)
    if why is not None:
        raise RuntimeError(f"{op}: {why}")
    return name


def kernels(name: str):
    """What the ops call for backend ``name`` (same launcher names and signatures for every backend):
    the tuner's dispatch where it chooses ("auto"; "triton" on a GPU, among its configs), else the
    backend's own launchers."""
    launchers_ = _KERNELS.get(name)
    if launchers_ is None:
        launchers_ = _KERNELS[name] = tune.dispatch(name)
    return launchers_


def launchers(name: str):
    """The module holding backend ``name``'s own launchers (``cnnfast.kernels`` for "triton",
    ``cnnfast._stock`` for "torch", the extension's for the others)."""
    module = _LAUNCHERS.get(name)
    if module is None:
        module = _LAUNCHERS[name] = _import_launchers(name)
    return module


_KERNELS = {}
_LAUNCHERS = {}


def _import_launchers(name: str):
    if name == "triton":
        return importlib.import_module("cnnfast.kernels")
    if name == "torch":
        return importlib.import_module("cnnfast._stock")
    if name in ("cuda", "cpu"):
        return importlib.import_module("cnnfast._extension")
    if name == "emulated_cuda":
        return importlib.import_module("cnnfast._extension").emulated
    raise AssertionError(name)


# Last: the tuner builds on this module (and resolve() reads it inside torch.compile's graphs, where
# an import cannot be traced).
from . import tune  # noqa: E402
