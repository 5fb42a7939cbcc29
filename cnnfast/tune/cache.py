"""The tuner's choices on disk: one JSON file per machine setup under ``$XDG_CACHE_HOME/cnnfast/tune/``
(``~/.cache/cnnfast/tune/`` without it; ``$CNNFAST_CACHE_DIR`` overrides both).

A file belongs to one device (its name and compute capability; on CPU the processor and the thread
count, which change every timing) and one set of versions (cnnfast, torch, Triton): a choice measured
under other versions is never reused. Writers merge under an exclusive lock and replace the file
atomically, so concurrent processes (every DDP rank, two training runs) never corrupt it or drop
each other's entries. A corrupt or foreign file is ignored with one warning, and rewritten by the
next choice.
"""
import contextlib
import hashlib
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path

import torch

from ..build import cache_dir

FORMAT = 1


def directory() -> Path:
    """Where the cache files live: ``tune/`` in cnnfast's cache folder (``cnnfast.build.cache_dir``)."""
    return cache_dir() / "tune"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """What a choice depends on besides its case: the device and the versions."""
    from .. import __version__
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        where = dict(device=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)))
    else:
        where = dict(device=_cpu_name(), threads=torch.get_num_threads())
    return dict(format=FORMAT, **where, cnnfast=__version__, torch=torch.__version__, triton=triton_version)


def _slug(env: dict) -> str:
    name = "".join(c if c.isalnum() else "-" for c in env["device"].lower()).strip("-")[:40]
    digest = hashlib.sha1(json.dumps(env, sort_keys=True).encode()).hexdigest()[:12]
    return f"{name}-{digest}.json"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock beside ``path`` (no-op where fcntl is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class File:
    """One device's cache file: ``get`` is a dict lookup once loaded, ``put`` merges and writes."""

    def __init__(self, env: dict, root: Path = None):
        self.env = env
        self.path = (root or directory()) / _slug(env)
        self._entries = None
        self._warned = False

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            self._warn(f"cannot read it ({e.__class__.__name__}: {e})")
            return {}
        if not isinstance(data, dict) or data.get("env") != self.env or not isinstance(data.get("entries"), dict):
            self._warn("it is not a cnnfast tuning cache for this device and these versions")
            return {}
        return data["entries"]

    def _warn(self, why: str):
        if not self._warned:
            self._warned = True
            warnings.warn(f"cnnfast.tune: ignoring the cache file {self.path}: {why}; choices are measured again",
                          RuntimeWarning, stacklevel=4)

    def get(self, key: str):
        if self._entries is None:
            self._entries = self._read()
        return self._entries.get(key)

    def put(self, key: str, entry: dict):
        if self._entries is None:
            self._entries = self._read()
        self._entries[key] = entry
        try:
            with _locked(self.path):
                merged = self._read()       # what other processes wrote meanwhile
                merged[key] = entry
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
                try:
                    with os.fdopen(fd, "w") as f:
                        json.dump(dict(env=self.env, entries=merged), f, indent=1, sort_keys=True)
                    os.replace(tmp, self.path)
                except BaseException:
                    os.unlink(tmp)
                    raise
            self._entries.update(merged)
        except OSError as e:
            self._warn(f"cannot write it ({e})")


def files():
    """Every cache file here: ``[(path, env or None, number of entries)]``."""
    out = []
    for path in sorted(directory().glob("*.json")):
        try:
            with open(path) as f:
                data = json.load(f)
            out.append((path, data.get("env"), len(data.get("entries", {}))))
        except (OSError, ValueError, AttributeError):
            out.append((path, None, 0))
    return out


def clear() -> int:
    """Delete every cache file; return how many there were."""
    found = list(directory().glob("*.json")) + list(directory().glob("*.lock"))
    for path in found:
        path.unlink(missing_ok=True)
    return sum(p.suffix == ".json" for p in found)
