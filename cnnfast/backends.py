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

More backends plug in with ``register(name, launchers, devices)``: ``launchers`` is any object with
some of the launcher functions documented in ``cnnfast.launchers``. The built-in backends are
registered the same way, below. A registered backend works wherever a built-in one does
(``backend=``, ``use``, ``$CNNFAST_BACKEND``, ``cnnfast.convert``, ``cnnfast train --backend``,
``cnnfast bench --providers cnnfast:<name>``) and is a candidate of "auto" on its devices.

Installed packages register theirs through the entry-point group ``cnnfast.backends``: each entry
point names a function that cnnfast calls with no arguments and that calls ``register`` (the entry
point's name is only its label). They are loaded once, the first time a name not registered yet is
asked for or ``available()`` / ``names()`` is called, never at ``import cnnfast``; a plugin that
fails to load gives one warning naming it and is skipped.

``backend=None`` in the public API means the current default: ``use(name)`` sets it (and restores
the previous one when used as a context manager); it starts as ``$CNNFAST_BACKEND`` or "auto".
"""
import importlib
import importlib.metadata
import importlib.util
import os
import re
import types
import warnings

import torch

from . import launchers as interface

# The built-in backends' names (and "auto"); ``names()`` lists every registered one.
NAMES = ("triton", "cuda", "cpu", "torch", "auto", "emulated_cuda")
BUILTIN = tuple(n for n in NAMES if n != "auto")

# The dtypes the hand-written kernels implement; anything else runs on "torch" under "auto".
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

ENTRY_POINT_GROUP = "cnnfast.backends"

_NAME_RULE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
_PATH_RULE = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?\Z")
# Device types no backend can claim: meta tensors never reach a kernel (they run stock PyTorch's meta
# functions), and fake tensors get the custom ops' fake kernels.
_NOT_A_KERNEL_DEVICE = ("meta",)


class Backend:
    """One registered backend: its launchers (loaded on first use when given as an import path), the
    device types it runs on, and the launchers cnnfast calls for it (``calls``)."""

    def __init__(self, name, launchers, devices, available, slow_on, contiguous, builtin):
        self.name, self.devices, self.slow_on = name, devices, slow_on
        self.contiguous, self.builtin = contiguous, builtin
        self._available = available
        self._path = launchers if isinstance(launchers, str) else None
        self._object = None if self._path is not None else launchers
        self.functions = None if self._path is not None else _functions(name, launchers)
        self.problem = None    # why its launchers did not load (a sentence), or None

    def runs_on(self, device_type: str) -> bool:
        return self.devices is None or device_type in self.devices

    def why_unavailable(self, device: torch.device):
        if self.problem is not None:
            return self.problem
        if self._available is not None:
            why = self._available(device)
            if why is not None:
                return why
        if not self.runs_on(device.type):
            return (f"backend {self.name!r} runs on {' and '.join(self.devices)} tensors, not on a "
                    f"{device.type} tensor")
        return None

    def load(self):
        """The launchers object as registered (imported now if registered as a path)."""
        if self._object is None:
            module, _, attribute = self._path.partition(":")
            try:
                obj = importlib.import_module(module)
                for part in filter(None, attribute.split(".")):
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as e:
                self.problem = (f"backend {self.name!r}: its launchers {self._path!r} do not import "
                                f"({type(e).__name__}: {e})")
                raise RuntimeError(self.problem) from e
            try:
                self.functions = _functions(self.name, obj)
            except TypeError as e:
                self.problem = str(e)
                raise
            self._object = obj
        return self._object

    def has(self, launcher: str) -> bool:
        """Whether the backend implements ``launcher`` (a lazily imported one is assumed to while
        torch.compile traces: an import cannot be traced)."""
        if self.functions is None:
            if torch.compiler.is_compiling():
                return True
            try:
                self.load()
            except (RuntimeError, TypeError):
                return False    # self.problem says why; why_unavailable() reports it
        return launcher in self.functions

    def calls(self):
        """What cnnfast calls: the object itself where it has every launcher and reads any strides,
        else a namespace with every launcher (the missing gradients stock PyTorch's, the missing
        forwards raising), its tensors made contiguous when ``contiguous``."""
        obj = self.load()
        if not self.contiguous and set(self.functions) == set(interface.NAMES):
            return obj
        calls = types.SimpleNamespace()
        for attribute in ("FUSED_STATE", "NONDETERMINISTIC", "tune_configs", "CONFIG_DIGEST"):
            if hasattr(obj, attribute):
                setattr(calls, attribute, getattr(obj, attribute))
        for launcher in interface.NAMES:
            if launcher in self.functions:
                fn = getattr(obj, launcher)
                setattr(calls, launcher, _contiguous(fn) if self.contiguous else fn)
            elif launcher in interface.FORWARD.values():
                setattr(calls, launcher, _refuse(self.name, launcher))
            else:
                setattr(calls, launcher, _on_stock(self.name, launcher))
        return calls


def _functions(name, obj) -> frozenset:
    """The launcher names ``obj`` implements, checked: a clear error for none, or one not callable."""
    found = [n for n in interface.NAMES if getattr(obj, n, None) is not None]
    if not found:
        raise TypeError(f"cnnfast.backends.register({name!r}): {obj!r} has none of the launcher functions "
                        f"({', '.join(interface.NAMES)}); see cnnfast.launchers")
    for n in found:
        if not callable(getattr(obj, n)):
            raise TypeError(f"cnnfast.backends.register({name!r}): {n} is not callable "
                            f"(it is {type(getattr(obj, n)).__name__})")
    state = getattr(obj, "FUSED_STATE", _outputs_state())
    if (state != _outputs_state() and "conv_relu_maxpool2d_forward" in found
            and "conv_relu_maxpool2d_backward" not in found):
        raise TypeError(f"cnnfast.backends.register({name!r}): its fused forward writes a state of its own "
                        f"(FUSED_STATE = {state!r}), so it needs conv_relu_maxpool2d_backward too (stock PyTorch's "
                        "reads only 'pos')")
    return frozenset(found)


def _outputs_state():
    from ._outputs import FUSED_STATE
    return FUSED_STATE


def _layout_of(kwargs):
    return torch.channels_last if kwargs.get("channels_last") else torch.contiguous_format


def _contiguous(fn):
    """``fn`` given its tensors contiguous in the call's layout, and its results made so."""
    def call(*args, **kwargs):
        fmt = _layout_of(kwargs)
        args = [a.contiguous(memory_format=fmt) if isinstance(a, torch.Tensor) and a.dim() == 4 else
                a.contiguous() if isinstance(a, torch.Tensor) else a for a in args]
        out = fn(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.contiguous(memory_format=fmt) if isinstance(o, torch.Tensor) and o.dim() == 4 else o
                         for o in out)
        return out.contiguous(memory_format=fmt) if isinstance(out, torch.Tensor) and out.dim() == 4 else out
    call.__wrapped__ = fn
    return call


class MissingOp(RuntimeError):
    """Raised when a backend named explicitly has no forward for the op asked of it (it was registered
    without that launcher). The conformance suite skips that op's tests on such a backend."""


def _missing(name, launcher) -> MissingOp:
    op = next(op for op, fwd in interface.FORWARD.items() if fwd == launcher)
    return MissingOp(f"{op}: backend {name!r} has no {launcher} (it was registered without it); pass another "
                     "backend, or 'auto'")


def _refuse(name, launcher):
    def call(*args, **kwargs):
        raise _missing(name, launcher)
    return call


_FELL_BACK = set()


def _on_stock(name, launcher):
    """Stock PyTorch's ``launcher`` standing in for backend ``name``'s, said once."""
    def call(*args, **kwargs):
        if (name, launcher) not in _FELL_BACK:
            _FELL_BACK.add((name, launcher))
            warnings.warn(f"cnnfast: backend {name!r} has no {launcher}; stock PyTorch ('torch') runs it instead",
                          RuntimeWarning, stacklevel=2)
        kwargs.pop("config", None)
        return getattr(launchers("torch"), launcher)(*args, **kwargs)
    return call


_REGISTRY = {}     # name -> Backend, in registration order
_KERNELS = {}      # name -> what the ops call (``kernels``)
_LAUNCHERS = {}    # name -> the backend's launchers as cnnfast calls them (``launchers``)


def _check_devices(name, devices):
    if devices is None:
        return None
    if isinstance(devices, str):
        devices = (devices,)
    devices = tuple(devices)
    if not devices:
        raise ValueError(f"cnnfast.backends.register({name!r}): devices is empty; name the device types it runs "
                         "on, e.g. ('cuda',)")
    for d in devices:
        try:
            ok = isinstance(d, str) and torch.device(d).type == d and d not in _NOT_A_KERNEL_DEVICE
        except (RuntimeError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"cnnfast.backends.register({name!r}): unknown device type {d!r}; expected device "
                             "types such as 'cuda' or 'cpu' (no index; not 'meta')")
    return devices


def register(name: str, launchers, devices=("cuda",), *, replace: bool = False, available=None, slow_on=(),
             contiguous: bool = True) -> None:
    """Make ``name`` a cnnfast backend.

    ``launchers``: an object (module, class instance, namespace) with some of the launcher functions of
    ``cnnfast.launchers`` (which documents each one: arguments, layouts, dtypes, what it may assume, what
    it returns) and its optional attributes, or the import path "package.module[:attribute]" of one,
    imported when first used (and checked then). An op needs its forward; a missing gradient runs on
    stock PyTorch (one warning per backend and function).
    ``devices``: the device types it runs on (None: any).
    ``replace``: allow replacing a backend registered under ``name`` (never a built-in one).
    ``available(device)``: None where it can run on ``device`` now, else a sentence saying why not
    (default: ``devices`` alone decides).
    ``slow_on``: device types where it is correct but slow (an interpreter, an emulator): listed by
    ``available()`` before "torch", never timed, never chosen by "auto".
    ``contiguous``: give its launchers their tensors contiguous in the call's layout, and make their
    results so (False: the launchers read any strides, as the built-in ones do).
    """
    if not isinstance(name, str) or not _NAME_RULE.match(name):
        raise ValueError(f"cnnfast.backends.register: bad backend name {name!r}: a letter, then letters, digits, "
                         "'_', '-' or '.'")
    if name == "auto" or (name in BUILTIN and name in _REGISTRY):
        raise ValueError(f"cnnfast.backends.register: {name!r} is a built-in backend's name; choose another")
    if name in _REGISTRY and not replace:
        raise ValueError(f"cnnfast.backends.register: a backend {name!r} is already registered "
                         "(pass replace=True to replace it)")
    devices = _check_devices(name, devices)
    slow_on = _check_devices(name, slow_on) if slow_on else ()
    if isinstance(launchers, str) and not _PATH_RULE.match(launchers):
        raise ValueError(f"cnnfast.backends.register({name!r}): {launchers!r} is not an import path "
                         "'package.module' or 'package.module:attribute'")
    if launchers is None:
        raise TypeError(f"cnnfast.backends.register({name!r}): launchers is None; pass an object with the "
                        "launcher functions of cnnfast.launchers")
    if available is not None and not callable(available):
        raise TypeError(f"cnnfast.backends.register({name!r}): available must be callable(device) -> None or a "
                        "sentence")
    entry = Backend(name, launchers, devices, available, slow_on, bool(contiguous), builtin=name in BUILTIN)
    _REGISTRY[name] = entry
    _forget(name)


def unregister(name: str) -> None:
    """Remove backend ``name`` (registered with ``register``; the built-in ones stay). The default
    goes back to "auto" if it was ``name``."""
    global _default
    if name in BUILTIN or name == "auto":
        raise ValueError(f"cnnfast.backends.unregister: {name!r} is a built-in backend; it cannot be removed")
    if name not in _REGISTRY:
        raise ValueError(f"cnnfast.backends.unregister: no backend {name!r} is registered")
    del _REGISTRY[name]
    _forget(name)
    if _default == name:
        _default = "auto"


def _forget(name):
    """Drop what was derived from backend ``name``: its launchers and every choice "auto" made (the
    candidates changed)."""
    _KERNELS.pop(name, None)
    _KERNELS.pop("auto", None)
    _LAUNCHERS.pop(name, None)
    for key in [k for k in _FELL_BACK if k[0] == name]:
        _FELL_BACK.discard(key)
    tune_module = globals().get("tune")
    if tune_module is not None:
        tune_module._forget_choices()


# --- entry points ---------------------------------------------------------------------------------

_PLUGINS_LOADED = False


def load_plugins() -> None:
    """Register the backends of installed packages (entry-point group ``cnnfast.backends``), once."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    try:
        points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as e:  # a broken environment must not break cnnfast
        warnings.warn(f"cnnfast: could not list the {ENTRY_POINT_GROUP!r} entry points ({e})", RuntimeWarning)
        return
    for point in points:
        try:
            register_backends = point.load()
            if not callable(register_backends):
                raise TypeError(f"{point.value} is a {type(register_backends).__name__}, not a function that "
                                "registers backends")
            register_backends()
        except Exception as e:
            warnings.warn(f"cnnfast: the backend plugin {point.name!r} ({point.value}) failed to load and is "
                          f"skipped: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)


def names() -> list:
    """Every backend name cnnfast knows here (built-in, registered, from plugins), and "auto"."""
    load_plugins()
    return list(_REGISTRY) + ["auto"]


def _check_name(name: str) -> str:
    if name == "auto" or name in _REGISTRY:
        return name
    if not _PLUGINS_LOADED and not torch.compiler.is_compiling():
        load_plugins()
        if name in _REGISTRY:
            return name
    known = ", ".join(map(repr, list(_REGISTRY) + ["auto"]))
    raise ValueError(f"unknown cnnfast backend {name!r}; expected one of {known} (or a backend registered with "
                     "cnnfast.backends.register)")


# The default: a name not registered yet ($CNNFAST_BACKEND naming a plugin's backend) is checked when
# first used.
_default = os.environ.get("CNNFAST_BACKEND", "auto") or "auto"


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


def _current() -> str:
    global _default
    if _default != "auto" and _default not in _REGISTRY:
        try:
            _check_name(_default)
        except ValueError as e:
            raise ValueError(f"$CNNFAST_BACKEND: {e}") from None
    return _default


def default() -> str:
    """The backend that ``backend=None`` currently means."""
    return _current()


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


# --- the built-in backends: registered like any other ---------------------------------------------

def _triton_unavailable(device):
    if not _HAS_TRITON:
        return "backend 'triton' needs the triton package, which is not installed"
    if device.type == "cuda" or (device.type == "cpu" and _interpreting()):
        return None
    return (f"backend 'triton' runs on CUDA tensors; on a {device.type} tensor it runs only under the "
            "Triton interpreter (set TRITON_INTERPRET=1 before triton is imported)")


def _extension_unavailable(name):
    def why(device):
        if device.type != name:
            return f"backend {name!r} runs on {name} tensors, not on a {device.type} tensor"
        if not _EXTENSION_HAS[name]:
            if _EXTENSION is not None:
                return (f"backend {name!r} is not available: cnnfast._C was built without its {name.upper()} "
                        "kernels" + (" or no CUDA device is available" if name == "cuda" else ""))
            return f"backend {name!r} is not available: {_EXTENSION_PROBLEM}; run `cnnfast build-extension`"
        return None
    return why


def _emulator_unavailable(device):
    if device.type != "cpu":
        return f"backend 'emulated_cuda' runs the CUDA kernels on cpu tensors, not on a {device.type} tensor"
    if not _EXTENSION_HAS["emulated_cuda"]:
        return f"backend 'emulated_cuda' is not available: {_EXTENSION_PROBLEM}; run `cnnfast build-extension`"
    return None


# Registration order is "auto"'s order (and available()'s) on each device; "torch" always comes last.
register("triton", "cnnfast.kernels", ("cuda", "cpu"), available=_triton_unavailable, slow_on=("cpu",),
         contiguous=False)
register("cuda", "cnnfast._extension", ("cuda",), available=_extension_unavailable("cuda"), contiguous=False)
register("cpu", "cnnfast._extension", ("cpu",), available=_extension_unavailable("cpu"), contiguous=False)
register("emulated_cuda", "cnnfast._extension:emulated", ("cpu",), available=_emulator_unavailable,
         slow_on=("cpu",), contiguous=False)
register("torch", "cnnfast._stock", None, contiguous=False)


def _entry(name: str) -> Backend:
    return _REGISTRY[_check_name(name)]


def _why_unavailable(name: str, device: torch.device):
    """None if backend ``name`` can run on ``device``, else a sentence saying why not."""
    return _entry(name).why_unavailable(device)


def _slow(name: str, device: torch.device) -> bool:
    """Whether backend ``name`` only checks on ``device`` (an interpreter, an emulator): never timed."""
    entry = _REGISTRY.get(name)
    return entry is not None and device.type in entry.slow_on


def has(name: str, launcher: str) -> bool:
    """Whether backend ``name`` implements ``launcher`` itself (not through stock PyTorch)."""
    return _entry(name).has(launcher)


def _registered() -> tuple:
    """The backends registered besides the built-in ones (what "auto" chose among depends on them)."""
    return tuple(n for n in _REGISTRY if n not in BUILTIN)


def _kernel_order(device: torch.device, launcher=None) -> list:
    """The kernel backends "auto" chooses among on ``device`` (every available one that is not slow
    there, in registration order; "torch" not included), those implementing ``launcher`` if given."""
    return [e.name for e in _REGISTRY.values()
            if e.name != "torch" and e.runs_on(device.type) and device.type not in e.slow_on
            and e.why_unavailable(device) is None and (launcher is None or e.has(launcher))]


def available(device="cpu") -> list:
    """The backends that can run on ``device`` here, fastest first ("torch" always last): "auto"'s
    candidates in its order, then those that are correct but slow there (an interpreter, an emulator)."""
    load_plugins()
    device = torch.device(device)
    if device.type in _NOT_A_KERNEL_DEVICE:
        return ["torch"]
    slow = [e.name for e in _REGISTRY.values() if device.type in e.slow_on and e.why_unavailable(device) is None]
    return _kernel_order(device) + slow + ["torch"]


def resolve(backend, op: str, tensor: torch.Tensor) -> str:
    """The backend that runs ``op`` on ``tensor``: ``backend`` or the default, checked. "auto" stays
    "auto" where a kernel backend can run the case and the tuner chooses per call (else it is the
    heuristic's backend, or "torch").

    An explicitly named backend that cannot run the case (or has no forward for ``op``) raises;
    "auto" falls back to "torch".
    """
    name = _check_name(_current() if backend is None else backend)
    device = tensor.device
    forward = interface.FORWARD[op]
    if name == "auto":
        if tensor.dtype not in KERNEL_DTYPES:
            return "torch"
        order = _kernel_order(device, forward)
        if not order:
            return "torch"
        # Measured per case and direction by the tuner, unless measuring is off.
        return "auto" if tune.enabled() else order[0]
    if name == "torch":
        return name
    if tensor.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: backend {name!r} supports float32, float16 and bfloat16, not {tensor.dtype}; "
                        "use backend='torch' or 'auto'")
    entry = _REGISTRY[name]
    why = entry.why_unavailable(device)
    if why is not None:
        raise RuntimeError(f"{op}: {why}")
    if not entry.has(forward):
        if entry.problem is not None:
            raise RuntimeError(f"{op}: {entry.problem}")
        raise _missing(name, forward)
    return name


def kernels(name: str):
    """What the ops call for backend ``name`` (same launcher names and signatures for every backend):
    the tuner's dispatch where it chooses ("auto"; a backend with configs, "triton" on a GPU), else the
    backend's own launchers."""
    launchers_ = _KERNELS.get(name)
    if launchers_ is None:
        launchers_ = _KERNELS[name] = tune.dispatch(name)
    return launchers_


def launchers(name: str):
    """Backend ``name``'s launchers as cnnfast calls them: the registered object itself (``cnnfast.kernels``
    for "triton", ``cnnfast._stock`` for "torch", the extension's for the others), or, for a backend that
    leaves launchers out or asked for contiguous tensors, a namespace adapting it (``Backend.calls``)."""
    module = _LAUNCHERS.get(name)
    if module is None:
        module = _LAUNCHERS[name] = _entry(name).calls()
    return module


# Last: the tuner builds on this module (and resolve() reads it inside torch.compile's graphs, where
# an import cannot be traced).
from . import tune  # noqa: E402
