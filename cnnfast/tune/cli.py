"""``cnnfast tune``: tune every layer of a model (its training step run until every call's choice is
confirmed) and print the choices; show or clear the cache."""
import argparse
import sys

import torch

from .. import tune

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _parser(prog):
    p = argparse.ArgumentParser(prog=prog, description=(
        "Run a model's forward and backward on cnnfast's layers, measuring the choice of backend and "
        "config for every layer and direction (stock PyTorch among the candidates) in the first step and "
        f"confirming each layer's call, timed whole, {tune.CONFIRM_AFTER} steps later; print them. "
        "The choices are cached on disk and reused by every later run on this device."))
    p.add_argument("--model", default="net",
                   help="'net' (cnnfast.Net) or a torchvision model name, converted with cnnfast.convert "
                        "(default: net)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    p.add_argument("--image", type=int, default=None, help="image side (default: 32 for net, else 224)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--channels-last", action="store_true", help="channels_last input and weights")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--backend", default="auto", help="the backend to tune (default: auto)")
    p.add_argument("--show", action="store_true", help="list the cache files and their entries, then exit")
    p.add_argument("--clear", action="store_true", help="delete the cache, then exit")
    return p


def _model(name, dtype, device, fmt, backend):
    import cnnfast
    if name == "net":
        model = cnnfast.Net(backend=backend)
    else:
        try:
            import torchvision
        except ImportError:
            raise SystemExit("cnnfast tune: --model other than 'net' needs torchvision (pip install torchvision)")
        builder = getattr(torchvision.models, name, None)
        if builder is None or not callable(builder):
            raise SystemExit(f"cnnfast tune: unknown --model {name!r} (try net, resnet18, densenet121)")
        model = cnnfast.convert(builder(weights=None), backend=backend)
    return model.to(device=device, dtype=dtype, memory_format=fmt).train()


def _label_layers(model):
    """Forward hooks that name the layer each decision is made in; returns their handles."""
    from ..models import Net
    from ..nn import Conv2d, ConvReLUMaxPool2d, MaxPool2d
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (Conv2d, MaxPool2d, ConvReLUMaxPool2d)) or (isinstance(m, Net) and name == ""):
            label = tune.layer(name or type(m).__name__)

            def enter(module, inputs, label=label):
                label.__enter__()

            def leave(module, inputs, output, label=label):
                label.__exit__()
            handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    return handles


def _ms(s):
    return "-" if s is None else f"{s * 1e3:.3f}"


WHOLE = ("training call", "call")   # the rows judging a call as a whole


def _totals(decisions):
    """(chosen, stock) seconds over the decisions: a call's last whole-call row (its plan, or its
    confirmation: judged against stock PyTorch's whole call) stands for its direction rows. A call is
    a layer's forward and the rows that follow it in that layer."""
    per_call, whole, forward_of = {}, {}, {}
    for d in decisions:
        if d.launcher.endswith("_forward"):
            forward_of[d.layer] = d.case
        key = (d.layer, d.case if d.launcher in WHOLE else forward_of.get(d.layer, d.case))
        if not (d.seconds and d.stock_seconds):
            continue
        if d.launcher in WHOLE:
            whole[key] = (d.seconds, d.stock_seconds)
        else:
            chosen, stock = per_call.get(key, (0.0, 0.0))
            per_call[key] = (chosen + d.seconds, stock + d.stock_seconds)
    per_call.update(whole)
    return sum(c for c, _ in per_call.values()), sum(s for _, s in per_call.values())


def _table(decisions):
    rows = [("layer", "op", "chosen", "config", "ms", "stock ms", "stock/chosen", "best kernel ms", "how")]
    chosen_total, stock_total = _totals(decisions)
    for d in decisions:
        ratio = f"{d.stock_seconds / d.seconds:.2f}x" if d.seconds and d.stock_seconds else "-"
        rows.append((d.layer or "-", d.launcher, d.backend, "-" if d.config is None else str(d.config),
                     _ms(d.seconds), _ms(d.stock_seconds), ratio, _ms(d.kernel_seconds), d.source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if stock_total:
        lines.append(f"\nmeasured calls (a call's last whole-call row standing for its directions): "
                     f"{chosen_total * 1e3:.3f} ms chosen, {stock_total * 1e3:.3f} ms stock PyTorch "
                     f"({stock_total / chosen_total:.2f}x)")
    return "\n".join(lines)


def main(argv=None, prog="cnnfast tune") -> int:
    args = _parser(prog).parse_args(argv)
    if args.clear:
        print(f"cnnfast tune: deleted {tune.cache.clear()} cache file(s) under {tune.cache.directory()}")
        return 0
    if args.show:
        found = tune.cache.files()
        print(f"cache: {tune.cache.directory()} ({len(found)} file(s))")
        for path, env, entries in found:
            what = "unreadable or foreign" if env is None else ", ".join(f"{k}={v}" for k, v in env.items())
            print(f"  {path.name}: {entries} choice(s); {what}")
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    image = args.image or (32 if args.model == "net" else 224)
    try:
        model = _model(args.model, dtype, device, fmt, args.backend)
    except (ValueError, RuntimeError) as e:
        print(f"cnnfast tune: {e}", file=sys.stderr)
        return 2
    x = torch.randn(args.batch, 3, image, image, device=device, dtype=dtype).contiguous(memory_format=fmt)
    tune.enable(True)
    start = len(tune.decisions())
    handles = _label_layers(model)
    try:
        for step in range(tune.CONFIRM_AFTER + 1):
            model(x).float().square().mean().backward()
            first = len(tune.decisions()) if step == 0 else first
    finally:
        for h in handles:
            h.remove()
    # The first step's rows, and of the later steps' only the confirmations (the rest repeat the first's).
    made = tune.decisions()
    rows = made[start:first] + [d for d in made[first:] if d.source == "confirmed"]
    print(f"cnnfast tune: {args.model}, batch {args.batch}, {image}x{image}, {args.dtype}"
          f"{', channels_last' if args.channels_last else ''}, {device}, backend {args.backend}")
    print(_table(rows))
    print(f"\ncache: {tune.cache.directory()}")
    return 0
