"""``cnnfast test``: the conformance suite on one backend (``cnnfast.testing.run``), its report printed;
exit status 0 when it passed, 1 when a test failed, 2 on a usage error."""
import argparse
import importlib
import importlib.util
import os
import sys


def _parser(prog):
    p = argparse.ArgumentParser(prog=prog, description=(
        "Run cnnfast's conformance suite (the correctness tests cnnfast runs on itself: float64 references, "
        "poisoned outputs, every argument of every op, gradients, bad input, the Net over SGD steps) on one "
        "backend, built-in or registered, and report each failure with its op, case, seed, error and bound."))
    p.add_argument("--backend", required=True, metavar="NAME",
                   help="the backend to test: a built-in one, one an installed package registers through the "
                        "'cnnfast.backends' entry points, or one an --import registers")
    p.add_argument("--quick", action="store_true", help="only the suite's quick subset")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where the inputs live (default: cuda if available, else cpu)")
    p.add_argument("-k", metavar="EXPRESSION", default=None, help="pytest's -k: only the tests it selects")
    p.add_argument("--seed", type=int, default=0, help="xor'ed into every test's seed, to draw other inputs")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import this module (a dotted name, or a .py file) first: where a backend not installed "
                        "as a package calls cnnfast.backends.register (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="pytest's progress output and tracebacks")
    return p


def _import(target: str):
    """Import ``target``: a dotted module name, or the path of a .py file."""
    if target.endswith(".py") or os.sep in target:
        if not os.path.isfile(target):
            raise SystemExit(f"cnnfast test: --import {target}: no such file")
        name = "_cnnfast_test_" + os.path.splitext(os.path.basename(target))[0]
        spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(target)


def main(argv=None, prog="cnnfast test") -> int:
    args = _parser(prog).parse_args(argv)
    for target in args.imports:
        _import(target)
    import torch

    from . import run
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        report = run(args.backend, quick=args.quick, device=device, k=args.k, seed=args.seed, verbose=args.verbose)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.passed else 1
