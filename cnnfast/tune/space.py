"""What the tuner chooses among, and how it checks a candidate before timing it.

A candidate is ``(backend, config)``: config one of the values the backend's ``tune_configs`` lists
for the call (the Triton kernels': an index into their ``*_CONFIGS``), or None where the backend has
one way to run it (the C++ kernels tile themselves; stock PyTorch picks its own algorithm; a
registered backend without ``tune_configs``).
"""
import torch

from .. import backends
from .._outputs import FUSED_STATE

# Relative error ‖out − stock‖ / ‖stock‖ a candidate may show against stock PyTorch on the same inputs
# (both carry rounding error against exact results; TF32 on either side widens float32's).
TOLERANCE = {torch.float32: 1e-4, "tf32": 2e-2, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _triton_configs(launcher: str, args, kwargs):
    """The Triton backend's configs for this call (``cnnfast.kernels.tune_configs``)."""
    from .. import kernels
    return kernels.tune_configs(launcher, args, kwargs)


def candidates(launcher: str, requested: str, device: torch.device, args, kwargs, state=FUSED_STATE):
    """The (backend, config) pairs to choose among for this call: under "auto" every backend that
    runs on ``device`` with each of its configs, else ``requested``'s configs. Under
    ``torch.use_deterministic_algorithms(True)`` only deterministic ones; for the fused op's backward
    only backends that read the ``state`` its forward wrote."""
    names = backends._kernel_order(device, launcher) + ["torch"] if requested == "auto" else [requested]
    deterministic = torch.are_deterministic_algorithms_enabled()
    out = []
    for name in names:
        if backends._why_unavailable(name, device) is not None or not backends.has(name, launcher):
            continue
        module = backends.launchers(name)
        if deterministic and launcher in getattr(module, "NONDETERMINISTIC", ()):
            continue
        if launcher == "conv_relu_maxpool2d_backward" and getattr(module, "FUSED_STATE", FUSED_STATE) != state:
            continue
        tune_configs = getattr(module, "tune_configs", None)
        configs = [None] if tune_configs is None else tune_configs(launcher, args, kwargs)
        out += [(name, c) for c in configs]
    return out


def _outputs(launcher: str, result):
    """The tensors of a launcher's result that must agree with stock PyTorch's."""
    if launcher == "max_pool2d_forward":
        return result[:1]          # indices are checked by ``_indices_point_at_maxima``
    if launcher == "conv_relu_maxpool2d_forward":
        return result[:1]          # pos is checked through the backward that reads it
    return result if isinstance(result, tuple) else (result,)


def _rel_err(out, ref) -> float:
    if out.shape != ref.shape:
        return float("inf")
    out, ref = out.double(), ref.double()
    nan = ref.isnan()
    if not torch.equal(nan, out.isnan()):
        return float("inf")
    out, ref = out.masked_fill(nan, 0), ref.masked_fill(nan, 0)
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def _indices_point_at_maxima(x, out, idx) -> bool:
    n, c = x.shape[:2]
    taken = x.reshape(n, c, -1).gather(2, idx.reshape(n, c, -1).clamp(0, x.shape[2] * x.shape[3] - 1))
    return torch.equal(taken.reshape(out.shape).isnan(), out.isnan()) and bool(
        (taken.reshape(out.shape).nan_to_num() == out.nan_to_num()).all())


def error(launcher: str, args, kwargs, result, reference):
    """None if ``result`` agrees with stock PyTorch's ``reference``, else a sentence saying how not."""
    outs, refs = _outputs(launcher, result), _outputs(launcher, reference)
    if len(outs) != len(refs) or any((o is None) != (r is None) for o, r in zip(outs, refs)):
        return "it returned other outputs than stock PyTorch"
    dtype = next(r.dtype for r in refs if r is not None)
    tf32 = dtype == torch.float32 and kwargs.get("allow_tf32") and args[0].device.type == "cuda"
    tol = TOLERANCE["tf32" if tf32 else dtype]
    for o, r in zip(outs, refs):
        if r is not None and not _rel_err(o, r) <= tol:
            return f"relative error {_rel_err(o, r):.3g} against stock PyTorch > {tol:.3g}"
    if launcher == "max_pool2d_forward" and result[1] is not None and not _indices_point_at_maxima(
            args[0], result[0], result[1]):
        return "its indices do not point at the maxima"
    return None
