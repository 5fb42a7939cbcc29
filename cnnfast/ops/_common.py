"""What every op module shares: registering a custom op, the layout and eager tests, and the two
ways into an op (the custom op, or the eager autograd.Function).

A torch.library custom op costs ~50 us of Python dispatch per call, more than a small layer's kernel.
So every op function is kept twice: as the custom op ``cnnfast::<name>`` (torch.compile and anything
tracing, fake tensors, tensor subclasses) and as the plain function it was made from, which eager calls
on plain tensors run, inside a ``torch.autograd.Function`` when a gradient is wanted. Both paths share
the op module's context setup and its one backward; only how that backward calls the gradient ops
differs. Op functions take their int lists as tuples, as the launchers do: the front end passes
tuples, and the custom ops convert the lists the dispatcher gives them.

Double backward: every gradient op has a backward of its own (written in cnnfast's ops again), so a
backward run with ``create_graph=True`` is recorded like any forward. Autograd runs a backward with
grad mode on exactly then; only then does the eager path go through the gradient ops' Functions (one
``torch.is_grad_enabled()`` on the first-order path). The traced path needs nothing: the gradient
custom ops carry their own ``register_autograd``.

Forward mode (torch.func.jvp, jacfwd, hessian): an op given a ``jvp`` rule has it on its torch.func
Function only, again in cnnfast's ops, so the eager first-order path carries nothing for it.
"""
import inspect

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch._prims_common import is_channels_last_contiguous_2d

# Op -> the function it was made from: the same computation without torch.library's dispatch.
_DIRECT = {}
# Op -> its eager autograd.Function (ops given a backward by register_autograd).
_FUNCTIONS = {}
# Op -> its autograd.Function for torch.func transforms (setup_context form, vmap rule generated
# from the custom ops' own): torch.library's register_autograd does not serve torch.func.grad.
_FUNC_FUNCTIONS = {}


def custom_op(name: str, fake):
    """Decorator: register the function as the custom op ``cnnfast::<name>`` (schema from its
    annotations) with the fake kernel ``fake``; return the op."""
    def register(fn):
        def from_dispatcher(*args):
            return fn(*[tuple(a) if type(a) is list else a for a in args])

        schema = torch.library.infer_schema(fn, mutates_args=())
        op = torch.library.custom_op(f"cnnfast::{name}", from_dispatcher, mutates_args=(), schema=schema)
        op.register_fake(fake)
        _DIRECT[op] = fn
        return op
    return register


def empty(x: Tensor, shape, channels_last: bool, dtype=None) -> Tensor:
    """A fake kernel's output: ``shape`` in the layout (and by default the dtype) the launcher gives."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


def is_channels_last(t: Tensor) -> bool:
    """Whether ``t`` is in channels_last and not also contiguous (size-1 dimensions make it both)."""
    if t.dim() != 4 or t.is_contiguous():
        return False
    if torch._C._are_functorch_transforms_active():
        # vmap cannot answer is_contiguous for channels_last (forward mode reaches it with batched
        # tangents); the strides tell it.
        return is_channels_last_contiguous_2d(t)
    return t.is_contiguous(memory_format=torch.channels_last)


_PLAIN = (Tensor, torch.nn.Parameter)


def wants_grad(*tensors) -> bool:
    """Whether autograd would record an op on ``tensors`` (None allowed), or a torch.func transform may
    differentiate it: forward mode leaves ``requires_grad`` unset, and its rules need the saved indices
    and window positions too."""
    return (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
            or _differentiated_forward())


def _differentiated_forward() -> bool:
    """Whether forward-mode AD may be at work: a torch.func transform, or a ``torch.autograd.forward_ad``
    dual level (dual tensors are plain Tensors to ``type``: without this their tangent would be dropped)."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def run(op, function, tensors, args):
    """``op(*args)`` the fastest way: eager calls on plain ``tensors`` (None allowed) run
    ``function.apply`` (the op's eager autograd.Function), or op's function alone when ``function`` is
    None (nothing to differentiate: Function.apply costs ~15 us even then); the rest runs the custom op:
    under torch.compile, on tensor subclasses; inside torch.func transforms and forward-AD dual levels
    (whose tensors are plain Tensors to ``type``) the torch.func Functions, which carry the jvp rules."""
    if _differentiated_forward():
        return func_path(op)(*args)
    if torch.compiler.is_compiling() or not all(t is None or type(t) in _PLAIN for t in tensors):
        return op(*args)
    return _DIRECT[op](*args) if function is None else function.apply(*args)


def func_path(op):
    """How code under torch.func transforms calls ``op``: through its torch.func Function if it has a
    backward, else the custom op (its batching rule)."""
    function = _FUNC_FUNCTIONS.get(op)
    if function is None:
        return op
    return lambda *args: function.apply(*[_Leaf(a) if isinstance(a, (tuple, list)) else a for a in args])


class _Leaf(tuple):
    """An int-list argument as torch.func's pytrees see it: one leaf. The vmap rule torch generates for
    an autograd.Function's jvp matches tangents (one per argument) with the arguments' flattened
    pytree, which fails on tuple arguments (torch 2.14); a tuple subclass is not flattened."""


def eager_path(op):
    """How a backward on the eager path calls the gradient op ``op``: its plain function, or, when the
    backward is being recorded (``create_graph=True``: grad mode is on), its autograd.Function."""
    if torch.is_grad_enabled():
        function = _FUNCTIONS.get(op)
        if function is not None:
            return function.apply
    return _DIRECT[op]


def sum_terms(terms):
    """The sum of a jvp's tangent terms, None ones (inputs without a tangent) left out."""
    terms = [t for t in terms if t is not None]
    return sum(terms[1:], terms[0]) if terms else None


_SAVED = object()  # marks, in a jvp's kept arguments, a tensor saved for forward


def _forward_mode(setup, jvp):
    """The torch.func Function's (setup_context, jvp) for the rule ``jvp(args, outputs, tangents, path)``:
    the op's arguments and outputs as the forward saw them, one tangent per argument (None where it has
    none); it returns the outputs' tangents, reaching ops through ``func_path``."""
    def setup_context(ctx, inputs, output):
        setup(ctx, inputs, output)
        outputs = output if isinstance(output, tuple) else (output,)
        # jvp may read tensors only through save_for_forward; the rest is kept as it came.
        ctx.save_for_forward(*[a for a in inputs if isinstance(a, Tensor)], *outputs)
        ctx.jvp_args = tuple(_SAVED if isinstance(a, Tensor) else a for a in inputs)

    def run_jvp(ctx, *tangents):
        saved = iter(ctx.saved_tensors)
        args = tuple(next(saved) if a is _SAVED else a for a in ctx.jvp_args)
        return jvp(args, tuple(saved), tangents, func_path)
    return setup_context, run_jvp


def register_autograd(op, setup, backward, name: str, *, eager=eager_path, traced=lambda op: op, func=func_path,
                      jvp=None):
    """Give ``op`` (a forward custom op) its backward on both paths; return the eager autograd.Function,
    a class called ``name``.

    ``setup(ctx, inputs, output)`` saves what the backward needs; ``backward(ctx, *grads, path)`` returns
    the gradients of the leading inputs, reaching the gradient ops through ``path``: ``traced`` under
    ``register_autograd``, ``eager`` in the Function, ``func`` in the torch.func Function. By default
    ``path(op)`` is the op itself, eagerly ``eager_path(op)``, under torch.func ``func_path(op)``. The
    eager Function is written in the classic ``forward(ctx, ...)`` form: a separate setup_context costs
    an inspect.signature bind per call (torch.func needs that form: it gets a Function of its own).
    ``jvp``: the forward-mode rule (see ``_forward_mode``), given to the torch.func Function only;
    without one, torch.func.jvp raises.
    """
    forward_fn = _DIRECT[op]
    inputs = len(inspect.signature(forward_fn).parameters)

    def backward_via(path):
        def run_backward(ctx, *grads):
            grads = backward(ctx, *grads, path=path)
            return grads + (None,) * (inputs - len(grads))
        return run_backward

    def forward(ctx, *args):
        output = forward_fn(*args)
        setup(ctx, args, output)
        return output

    op.register_autograd(backward_via(traced), setup_context=setup)
    function = type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                        "backward": staticmethod(backward_via(eager))})
    _FUNCTIONS[op] = function
    func_methods = {"setup_context": staticmethod(setup)}
    if jvp is not None:
        func_setup, run_jvp = _forward_mode(setup, jvp)
        func_methods = {"setup_context": staticmethod(func_setup), "jvp": staticmethod(run_jvp)}
    _FUNC_FUNCTIONS[op] = type(f"{name}ForTorchFunc", (torch.autograd.Function,), {
        "generate_vmap_rule": True,
        "forward": staticmethod(lambda *args: op(*[tuple(a) if type(a) is _Leaf else a for a in args])),
        "backward": staticmethod(backward_via(func)), **func_methods})
    return function


# --- torch.func.vmap: batching rules ---------------------------------------------------------------
# A vmapped dimension of size B is folded into the batch, (B, N, ...) -> (B*N, ...), where only the
# input is batched; where weights are batched too, it is folded into the channels with B times the
# groups, (B, N, C, H, W) -> (N, B*C, H, W) and weights (B, K, ...) -> (B*K, ...): one call either way.

def batched_first(t, dim, size):
    """``t`` with its vmapped dimension first (expanded to ``size`` when it has none); None stays None."""
    if t is None:
        return None
    return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)


def fold_batch(t, dim, size):
    """(B, N, ...) -> (B*N, ...)."""
    t = batched_first(t, dim, size)
    return None if t is None else t.reshape(size * t.shape[1], *t.shape[2:])


def unfold_batch(t, size):
    """(B*N, ...) -> (B, N, ...)."""
    return t.reshape(size, t.shape[0] // size, *t.shape[1:])


def fold_channels(t, dim, size):
    """(B, N, C, H, W) -> (N, B*C, H, W)."""
    t = batched_first(t, dim, size)
    return t.transpose(0, 1).reshape(t.shape[1], size * t.shape[2], *t.shape[3:])


def unfold_channels(t, size):
    """(N, B*C, H, W) -> (B, N, C, H, W)."""
    return t.reshape(t.shape[0], size, t.shape[1] // size, *t.shape[2:]).transpose(0, 1)


def register_vmap(op, rule):
    """Give ``op`` the batching rule ``rule(size, dims, *args) -> outputs`` (every output batched in
    dimension 0); ``dims``: the vmapped dimension of each argument (None: not batched)."""
    def batching_rule(info, in_dims, *args):
        out = rule(info.batch_size, in_dims, *args)
        return out, (tuple(0 for _ in out) if isinstance(out, tuple) else 0)
    op.register_vmap(batching_rule)
