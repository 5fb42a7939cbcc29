"""``cnnfast.convert(model)``: put an existing PyTorch model onto cnnfast's layers.

Three rewrites, in this order:

1. In eval mode, ``Conv2d → BatchNorm2d`` is folded into one ``Conv2d`` (the normalisation becomes the
   convolution's weight scale and bias), computed in float64 and stored in the weights' dtype.
2. ``Conv2d → ReLU → MaxPool2d`` becomes one ``cnnfast.nn.ConvReLUMaxPool2d``, which never writes the
   pre-pool activation. (A folded ``Conv2d → BatchNorm2d → ReLU → MaxPool2d`` fuses too.)
3. Every remaining ``torch.nn.Conv2d`` and ``torch.nn.MaxPool2d`` becomes its ``cnnfast.nn`` subclass.

Rewrites 1 and 2 look for the patterns in ``nn.Sequential`` containers (the fused module takes the
conv's name and the absorbed entries are removed, so the other ``state_dict`` keys stay those of the
original model) and, through ``torch.fx``, in forward code (torchvision ResNet's ``conv1 → bn1 →
relu → maxpool``). Where the absorbed steps are modules called once, the conv's module is replaced
and they become ``nn.Identity``: the model keeps its class and its forward. Where a pattern ends in a
functional ``F.max_pool2d``, the result is a ``torch.fx.GraphModule`` holding the original
submodules under their names; a trace fixes Python-level decisions such as ``if self.training:`` at
the mode the model was in. A model ``torch.fx`` cannot trace gets the ``Sequential`` rewrites and
module replacement only.

Parameters are kept: the new modules hold the original ``Parameter`` objects (of the copy, unless
``inplace=True``), except where a BatchNorm was folded into a convolution. Modules that are
already cnnfast's, or subclasses of them, are not converted again; other subclasses of the torch
modules (which may have their own ``forward``) are left alone.
"""
import copy
import inspect
from collections import OrderedDict

import torch
import torch.nn.functional as TF
from torch import fx, nn

from . import functional as F
from . import nn as cnn

__all__ = ["convert"]

_CONVS = (nn.Conv2d, cnn.Conv2d)
_POOLS = (nn.MaxPool2d, cnn.MaxPool2d)
_CNNFAST = (cnn.Conv2d, cnn.MaxPool2d, cnn.ConvReLUMaxPool2d)


def convert(model: nn.Module, *, fuse: bool = True, backend=None, inplace: bool = False) -> nn.Module:
    """``model`` with every ``nn.Conv2d``/``nn.MaxPool2d`` replaced by cnnfast's, ``Conv2d → ReLU →
    MaxPool2d`` fused into ``cnnfast.nn.ConvReLUMaxPool2d`` and, for BatchNorm layers in eval mode,
    ``Conv2d → BatchNorm2d`` folded (``fuse=False``: replacement only).

    ``backend`` is given to every cnnfast module (None: the process-wide default, see
    ``cnnfast.backends``); modules that already were cnnfast's keep theirs unless it is given.
    ``inplace=False`` (default) converts a deep copy and leaves ``model`` as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    if fuse:
        for module in list(model.modules()):
            if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
                _fuse_sequential(module, backend)
        model = _fuse_traced(model, backend)
    if type(model) in (nn.Conv2d, nn.MaxPool2d):   # a bare layer: no parent to put the new one into
        return _replacement(model, backend, {})
    if isinstance(model, _CNNFAST):
        if backend is not None:
            model.backend = backend
        return model
    _replace(model, backend, {})
    return model


# --- the patterns ------------------------------------------------------------------------------

def _is_conv(m) -> bool:
    return type(m) in _CONVS


def _foldable(conv, bn) -> bool:
    return (_is_conv(conv) and isinstance(bn, nn.BatchNorm2d) and type(bn).forward in (
        nn.BatchNorm2d.forward, nn.SyncBatchNorm.forward) and not bn.training and bn.track_running_stats
        and bn.running_mean is not None and bn.num_features == conv.out_channels)


def _fusable(conv, relu, pool) -> bool:
    """``conv → relu → pool`` with module ``pool`` (or the geometry dict of a functional pool)."""
    if not (_is_conv(conv) and conv.padding_mode == "zeros" and relu):
        return False
    if isinstance(pool, dict):
        return not pool["ceil_mode"] and not pool["return_indices"] and \
            _all_one(pool["dilation"])
    return (type(pool) in _POOLS and not pool.return_indices and not pool.ceil_mode and _all_one(pool.dilation))


def _all_one(v) -> bool:
    return all(d == 1 for d in (v if isinstance(v, (tuple, list)) else (v,)))


def _new_conv(conv, weight, bias, cls, backend=None):
    """A ``cls`` module with ``conv``'s geometry holding ``weight`` and ``bias`` (built on the meta device:
    no initialisation is computed, none is kept)."""
    kwargs = dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                  stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=bias is not None, padding_mode=conv.padding_mode, device="meta", dtype=weight.dtype)
    new = cls(**kwargs, backend=backend) if issubclass(cls, cnn.Conv2d) else cls(**kwargs)
    new.weight, new.bias = weight, bias
    new.train(conv.training)
    return new


def _backend(module, backend):
    return backend if backend is not None else getattr(module, "backend", None)


def _fold(conv, bn):
    """``conv`` followed by eval-mode ``bn`` as one convolution of ``conv``'s type."""
    with torch.no_grad():
        w = conv.weight.double()
        b = conv.bias.double() if conv.bias is not None else torch.zeros_like(bn.running_mean, dtype=torch.float64)
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        shift = -bn.running_mean.double() * scale
        if bn.affine:
            scale, shift = scale * bn.weight.double(), shift * bn.weight.double() + bn.bias.double()
        weight = (w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)
        bias = (b * scale + shift).to(conv.weight.dtype)
    grad = conv.weight.requires_grad
    return _new_conv(conv, nn.Parameter(weight, grad), nn.Parameter(bias, grad), type(conv),
                     getattr(conv, "backend", None))


def _fused(conv, pool, backend):
    """``conv → ReLU → pool`` as one ``ConvReLUMaxPool2d`` holding ``conv``'s parameters."""
    if isinstance(pool, dict):
        kernel, stride, padding = pool["kernel_size"], pool["stride"], pool["padding"]
    else:
        kernel, stride, padding = pool.kernel_size, pool.stride, pool.padding
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel
    fused = cnn.ConvReLUMaxPool2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                  conv.padding, conv.dilation, conv.groups, bias=conv.bias is not None,
                                  pool_kernel_size=kernel, pool_stride=stride, pool_padding=padding,
                                  backend=_backend(conv, backend), device="meta", dtype=conv.weight.dtype)
    fused.weight, fused.bias = conv.weight, conv.bias
    fused.train(conv.training)
    return fused


# --- nn.Sequential -----------------------------------------------------------------------------

def _fuse_sequential(seq: nn.Sequential, backend):
    """Fold and fuse consecutive entries of ``seq``; the fused module takes the conv's name and the
    entries it absorbed are removed (the other entries keep their names)."""
    items = list(seq._modules.items())
    changed = False
    i = 0
    while i < len(items):
        name, m = items[i]
        if i + 1 < len(items) and _foldable(m, items[i + 1][1]):
            m = _fold(m, items[i + 1][1])
            items[i] = (name, m)
            del items[i + 1]
            changed = True
        if i + 2 < len(items) and type(items[i + 1][1]) is nn.ReLU and _fusable(m, True, items[i + 2][1]):
            items[i] = (name, _fused(m, items[i + 2][1], backend))
            del items[i + 1:i + 3]
            changed = True
        i += 1
    if changed:
        seq._modules = OrderedDict(items)


# --- forward code, through torch.fx ------------------------------------------------------------

class _Tracer(fx.Tracer):
    """Keeps cnnfast's modules and functions whole (they are leaves of the graph)."""

    def __init__(self):
        super().__init__(autowrap_functions=(F.conv2d, F.max_pool2d, F.conv_relu_maxpool2d))

    def is_leaf_module(self, m, qualname):
        return isinstance(m, _CNNFAST) or super().is_leaf_module(m, qualname)


_RELU_FUNCTIONS = (TF.relu, TF.relu_, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")


def _pool_signature(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                    return_indices=False):
    pass


def _functional_pool(node):
    """The geometry of a ``F.max_pool2d`` call with constant arguments, else None."""
    if node.op != "call_function" or node.target not in (TF.max_pool2d, torch.max_pool2d):
        return None
    try:
        bound = inspect.signature(_pool_signature).bind(*node.args, **node.kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    geometry = dict(bound.arguments)
    geometry.pop("input")
    if any(isinstance(v, fx.Node) for v in geometry.values()):
        return None
    return geometry


def _module(gm, node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_relu(gm, node) -> bool:
    if node.op == "call_module":
        return type(_module(gm, node)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in _RELU_METHODS


def _set_submodule(root, target: str, module):
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _fuse_traced(model: nn.Module, backend) -> nn.Module:
    """Fold and fuse the patterns in ``model``'s forward code.

    Where every absorbed step is a module called once (``self.bn1``, ``self.relu``, ``self.maxpool``),
    the conv's module is replaced and the absorbed modules become ``nn.Identity``: the model keeps its
    class and its forward. Where a pattern ends in a functional ``F.max_pool2d`` (or folds a
    BatchNorm module used twice) the graph is rewritten and a ``GraphModule`` returned, holding the
    original top-level submodules (so ``model.layer1[0]`` still works). ``model`` itself when it does
    not trace or holds no pattern outside ``Sequential`` containers."""
    try:
        graph = _Tracer().trace(model)
    except Exception:          # data-dependent control flow, unsupported ops, ...: no graph rewrites
        return model
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    module = model.get_submodule

    def single_call(node):
        return isinstance(node, fx.Node) and node.op == "call_module" and calls[node.target] == 1

    def single_conv(node):
        """``node`` is the only call of a conv module and its result has no other use."""
        return single_call(node) and len(node.users) == 1 and _is_conv(module(node.target))

    # Find the patterns on the graph; module(target) gives the current (possibly already folded) module.
    swaps, erase = {}, []                   # target -> new module; nodes to take out of the graph

    def current(node):
        return swaps.get(node.target) or module(node.target)

    for node in graph.nodes:                                   # conv → batchnorm (eval)
        if node.op == "call_module" and len(node.args) == 1 and not node.kwargs and single_conv(node.args[0]):
            conv_node = node.args[0]
            if _foldable(current(conv_node), module(node.target)):
                swaps[conv_node.target] = _fold(current(conv_node), module(node.target))
                erase.append((node, conv_node))
    erased = {n for n, _ in erase}
    for node in graph.nodes:                                   # conv → relu → max_pool2d
        if node in erased:
            continue
        if node.op == "call_module":
            pool = module(node.target) if len(node.args) == 1 and not node.kwargs else None
        else:
            pool = _functional_pool(node)
        if pool is None or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        relu_node = node.args[0]
        while relu_node in erased:                             # look through a folded batchnorm
            relu_node = relu_node.args[0]
        if not (_is_relu(model, relu_node) and len(relu_node.users) == 1 and relu_node.args):
            continue
        conv_node = relu_node.args[0]
        bn_nodes = []
        while conv_node in erased:
            bn_nodes.append(conv_node)
            conv_node = conv_node.args[0]
        if not single_conv(conv_node) or any(len(b.users) != 1 for b in bn_nodes):
            continue
        if not _fusable(current(conv_node), True, pool):
            continue
        swaps[conv_node.target] = _fused(current(conv_node), pool, backend)
        erase += [(relu_node, conv_node), (node, conv_node)]
        erased |= {relu_node, node}
    if not swaps:
        return model

    absorbed = [n for n, _ in erase]
    if all(single_call(n) or _is_relu(model, n) for n in absorbed):
        # Module swaps only: the model keeps its class and forward. A relu left behind (a function, or a
        # module also used elsewhere) acts on the fused op's non-negative output, where it changes nothing.
        for target, new in swaps.items():
            _set_submodule(model, target, new)
        for n in absorbed:
            if single_call(n):
                _set_submodule(model, n.target, nn.Identity())
        return model

    for node, replacement in reversed(erase):                  # rewrite the graph
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    graph.lint()
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    for name, child in model.named_children():                 # the original containers, not fx's copies
        setattr(gm, name, child)
    for target, new in swaps.items():
        _set_submodule(gm, target, new)
    for n in absorbed:
        if single_call(n):
            _set_submodule(gm, n.target, nn.Identity())
    gm.recompile()
    gm.training = model.training
    return gm


# --- module replacement ------------------------------------------------------------------------

def _replacement(m, backend, memo):
    """The cnnfast module for torch module ``m`` (the same one for a module used in several places)."""
    if id(m) not in memo:
        if type(m) is nn.Conv2d:
            memo[id(m)] = _new_conv(m, m.weight, m.bias, cnn.Conv2d, backend)
        else:
            memo[id(m)] = cnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices,
                                        m.ceil_mode, backend=backend)
            memo[id(m)].train(m.training)
    return memo[id(m)]


def _replace(module: nn.Module, backend, memo):
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        if type(child) in (nn.Conv2d, nn.MaxPool2d):
            setattr(module, name, _replacement(child, backend, memo))
        elif isinstance(child, _CNNFAST):
            if backend is not None:
                child.backend = backend
        else:
            _replace(child, backend, memo)
