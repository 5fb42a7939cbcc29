"""The ``cnnfast`` command. Each subcommand lives in its own module, imported only when it runs, so
``import cnnfast`` and ``cnnfast --help`` load none of them (nor matplotlib or torchvision)."""
import importlib
import sys

# name: (module with main(argv, prog) -> int, one line for the help)
COMMANDS = {
    "train": ("cnnfast.train", "train a CNN on cnnfast's layers, or fine-tune a pretrained one"),
    "bench": ("cnnfast.bench.cli", "time the layers against cuDNN/oneDNN and torch.compile, with rooflines"),
    "test": ("cnnfast.testing.cli", "run cnnfast's conformance suite (float64 references, every argument) on a backend"),
    "tune": ("cnnfast.tune.cli", "measure the fastest backend and config for every layer of a model, cached"),
    "build-extension": ("cnnfast.build", "compile the C++/CUDA kernels (cnnfast._C) for the installed torch"),
}

_USAGE = "usage: cnnfast [-h] [--version] <command> [options]"


def _help() -> str:
    width = max(map(len, COMMANDS))
    lines = [_USAGE, "", "Hand-written Triton and C++/CUDA kernels for CNNs, as drop-in PyTorch layers.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  show this help and exit", "  --version   show cnnfast's version and exit",
              "", "'cnnfast <command> --help' describes a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__
        print(f"cnnfast {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{_USAGE}\ncnnfast: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"cnnfast {name}")


if __name__ == "__main__":
    sys.exit(main())
