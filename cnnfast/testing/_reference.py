"""What every conformance test compares with, and how: float64 references, the tolerance table, fresh
random inputs, and the helpers that turn a disagreement into a ``Failure`` record (op, case, seed, the
error against float64 and the bound it broke).

Every comparison of a kernel's result goes through ``assert_matches_reference`` (values that carry
rounding: the relative error against float64 within the dtype's ceiling, or twice stock PyTorch's own
error at that dtype, and elementwise close), ``assert_close_reference`` (elementwise only, with given
tolerances) or ``assert_equal_reference`` (exact: pooled values and indices, an untouched input); a
property of the result (its dtype, its layout) goes through ``Case.check``. Each raises
``ConformanceError``, an ``AssertionError`` that carries the record.
"""
import dataclasses
import math

import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Relative-error ceilings (‖out − ref‖ / ‖ref‖ against float64) and elementwise tolerances per dtype;
# for low precision the kernel may also be up to twice as far from float64 as stock PyTorch is.
TOLERANCES = {
    # dtype:          (rel_err, atol, rtol)
    torch.float32: (1e-5, 1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3, 1e-2),
    torch.bfloat16: (1.6e-2, 1.6e-2, 5e-2),
}


@dataclasses.dataclass
class Settings:
    """What the suite runs on: set once per session by the pytest plugin (``--cnnfast-device``,
    ``--cnnfast-quick``, ``--cnnfast-seed``); cnnfast's own tests/ keep the defaults."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    quick: bool = False
    seed: int = 0


settings = Settings()


def device() -> str:
    """The device the suite's inputs live on."""
    return settings.device


def rand(*shape, dtype=torch.float32, channels_last=False, requires_grad=False, generator=None):
    """Fresh standard-normal input (never zeros) on the suite's device."""
    t = torch.randn(*shape, dtype=torch.float64, generator=generator).to(settings.device, dtype)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def rel_err(out, ref):
    """‖out − ref‖ / ‖ref‖ in float64 (the plain norm of the difference where ‖ref‖ is 0)."""
    out, ref = out.double(), ref.double()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def _shape(t):
    return None if t is None else tuple(t.shape)


@dataclasses.dataclass
class Failure:
    """One conformance failure, as ``cnnfast.testing.run`` reports it.

    ``op``: the op ("conv2d", "max_pool2d", "conv_relu_maxpool2d", or what a test covers);
    ``case``: the case's name; ``shapes``: the input shapes by name; ``arguments``: the op's keyword
    arguments; ``what``: the compared tensor ("output", "grad_input", "indices", ...); ``error`` and
    ``bound``: the measured error against float64 and the bound it broke (None where the failure is not
    a numeric one: a shape, a layout, an exception); ``seed``: the ``torch.manual_seed`` the test's
    inputs were drawn with (the same test and seed draw the same inputs); ``test``: the pytest test id.
    """
    op: str
    case: str
    message: str
    shapes: dict = dataclasses.field(default_factory=dict)
    arguments: dict = dataclasses.field(default_factory=dict)
    dtype: str = None
    layout: str = None
    backend: str = None
    what: str = None
    error: float = None
    bound: float = None
    seed: int = None
    test: str = None

    def describe(self) -> str:
        """The case in one line: shapes and arguments."""
        parts = [f"{k}={v}" for k, v in self.shapes.items()]
        parts += [f"{k}={v!r}" for k, v in self.arguments.items()]
        for label, value in (("dtype", self.dtype), ("layout", self.layout)):
            if value is not None:
                parts.append(f"{label}={value}")
        return ", ".join(parts)

    def __str__(self) -> str:
        head = f"{self.op} [{self.case}]" + (f" on backend {self.backend!r}" if self.backend else "")
        lines = [head]
        if self.describe():
            lines.append(f"  case:  {self.describe()}")
        if self.error is not None:
            bound = "" if self.bound is None else f" > bound {self.bound:.3g}"
            lines.append(f"  {self.what or 'result'}: error {self.error:.3g}{bound}")
        elif self.what:
            lines.append(f"  {self.what}")
        if self.seed is not None:
            lines.append(f"  seed:  {self.seed}")
        if self.test:
            lines.append(f"  test:  {self.test}")
        lines += ["  " + line for line in self.message.strip().splitlines()[:12]]
        return "\n".join(lines)


class ConformanceError(AssertionError):
    """A conformance check failed; ``failure`` is its record."""

    def __init__(self, failure: Failure):
        super().__init__(str(failure))
        self.failure = failure


@dataclasses.dataclass
class Case:
    """The case a test runs: what a failure report names."""
    op: str
    name: str
    shapes: dict = dataclasses.field(default_factory=dict)
    arguments: dict = dataclasses.field(default_factory=dict)
    dtype: torch.dtype = None
    layout: str = None
    backend: str = None
    seed: int = None

    def fail(self, what, message, error=None, bound=None):
        """Raise ``ConformanceError`` for this case."""
        raise ConformanceError(Failure(
            op=self.op, case=self.name, message=message, shapes=dict(self.shapes), arguments=dict(self.arguments),
            dtype=None if self.dtype is None else str(self.dtype).replace("torch.", ""), layout=self.layout,
            backend=self.backend, what=what, error=error, bound=bound, seed=self.seed))

    def check(self, condition, what, message):
        """A property of the result (its dtype, its layout, ...): fail with ``message`` unless it holds."""
        if not condition:
            self.fail(what, message)


def case_of(op, name, dtype=None, layout=None, backend=None, seed=None, arguments=None, **tensors):
    """A ``Case`` whose shapes are taken from the tensors (or shapes) given by name; None is left out."""
    shapes = {k: (_shape(v) if isinstance(v, torch.Tensor) else tuple(v)) for k, v in tensors.items() if v is not None}
    return Case(op=op, name=name, shapes=shapes, arguments=dict(arguments or {}), dtype=dtype, layout=layout,
                backend=backend, seed=seed)


def _compare(out, ref, dtype, stock=None, ceiling=None, what="output"):
    """None when ``out`` agrees with the float64 ``ref`` at ``dtype``; else (message, error, bound)."""
    if tuple(out.shape) != tuple(ref.shape):
        return f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}", None, None
    nans = torch.isnan(out)
    if nans.any() and not torch.isnan(ref).any():
        count = int(nans.sum())
        first = tuple(int(i) for i in nans.nonzero()[0])
        return (f"{what}: NaN where the reference has none ({count} of {out.numel()} elements, the first at "
                f"{first}; an unwritten output stays NaN)"), float(count), 0.0
    if ref.numel() == 0:
        return None
    table_ceiling, atol, rtol = TOLERANCES[dtype]
    ceiling = table_ceiling if ceiling is None else ceiling
    source = f"{dtype}'s ceiling"
    if stock is not None:
        twice = 2 * rel_err(stock, ref)
        if twice > ceiling:
            ceiling, source = twice, f"twice stock PyTorch's own error at {dtype}"
    err = rel_err(out, ref)
    if not err <= ceiling:
        return f"{what}: relative error against float64 {err:.3g} > {ceiling:.3g} ({source})", err, ceiling
    scale = max(ref.abs().max().item(), 1.0)
    return _compare_close(out, ref, atol * scale, rtol, what, dtype)


def _compare_close(out, ref, atol, rtol, what, dtype=None):
    """None where |out − ref| <= atol + rtol·|ref| elementwise (NaN only where ref is NaN)."""
    if tuple(out.shape) != tuple(ref.shape):
        return f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}", None, None
    o, r = out.detach().double(), ref.detach().double()
    allowed = atol + rtol * r.abs()
    diff = (o - r).abs()
    bad = ~((diff <= allowed) | (o == r) | (torch.isnan(o) & torch.isnan(r)))
    if not bad.any():
        return None
    excess = torch.where(bad, torch.nan_to_num(diff - allowed, nan=math.inf), torch.full_like(diff, -math.inf))
    worst = divmod_index(int(excess.argmax()), tuple(o.shape))
    at = tuple(worst)
    at_dtype = f" ({dtype})" if dtype is not None else ""
    message = (f"{what}{at_dtype}: {int(bad.sum())} of {o.numel()} elements differ beyond atol {atol:.3g} + rtol "
               f"{rtol:.3g}·|ref|; the worst at {at}: {o[at].item():.6g} vs the reference's {r[at].item():.6g}")
    return message, diff[at].item(), allowed[at].item()


def divmod_index(flat, shape):
    """The multi-dimensional index of flat index ``flat`` in ``shape``."""
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return list(reversed(index))


def assert_matches_reference(case, out, ref, *, stock=None, what="output"):
    """``out`` (at ``case.dtype``) agrees with the float64 ``ref``: relative error within the dtype's
    ceiling (or within twice stock PyTorch's own error ``stock`` at that dtype, if larger), and
    elementwise close with tolerances scaled to the reference's magnitude. Raises ``ConformanceError``
    naming the case, the error and the bound."""
    problem = _compare(out, ref, case.dtype, stock, what=what)
    if problem is not None:
        case.fail(what, *problem)


def assert_close_reference(case, out, ref, *, atol, rtol, what="output"):
    """Elementwise |out − ref| <= atol + rtol·|ref| (NaN only where ``ref`` is NaN)."""
    problem = _compare_close(out, ref, atol, rtol, what)
    if problem is not None:
        case.fail(what, *problem)


def assert_equal_reference(case, out, ref, *, what="output", equal_nan=True):
    """``out`` equals ``ref`` exactly, shape, dtype and values (NaN where ``ref`` has NaN, if
    ``equal_nan``): for what involves no arithmetic, such as pooled values and their indices."""
    if tuple(out.shape) != tuple(ref.shape):
        case.fail(what, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}")
    if out.dtype != ref.dtype:
        case.fail(what, f"{what}: dtype {out.dtype} != {ref.dtype}")
    same = out == ref
    if equal_nan and out.is_floating_point():
        same |= torch.isnan(out) & torch.isnan(ref)
    if not bool(same.all()):
        count = int((~same).sum())
        at = tuple(divmod_index(int((~same).flatten().nonzero()[0]), tuple(out.shape)))
        case.fail(what, f"{what}: {count} of {out.numel()} elements differ from the reference's (exact match "
                        f"expected); the first at {at}: {out[at].item()} vs {ref[at].item()}", float(count), 0.0)


def assert_unchanged(case, t, before, what="input"):
    """The op left its input as it was (NaN included)."""
    assert_equal_reference(case, t.detach(), before, what=f"{what} (the op modified it)")


def assert_matches(out, ref, dtype, stock=None, what="output"):
    """``assert_matches_reference`` for tests outside the suite (no case to name): raises
    ``AssertionError`` with the message."""
    problem = _compare(out, ref, dtype, stock, what=what)
    if problem is not None:
        raise AssertionError(problem[0])
