"""The Python steps of ``bench/gpu_check.sh`` and ``bench/prebuilt.sh``, run as a plain script
(``python bench/gpu_check_helpers.py COMMAND ...``): they must work before cnnfast is installed, so this
file imports nothing from cnnfast and torch only where a command needs it.

    write-info DIR ARCHS         describe the extension in DIR (BUILD_INFO.json): the Python ABI suffix,
                                 the torch it was built against, its CUDA architectures, a digest of the
                                 sources it was built from
    check-prebuilt DIR [ARCH]    exit 0 if DIR holds an extension that the running Python and torch can
                                 use for compute capability ARCH ("90"), else 1; one line says why
    suite-line JSON              one line on a ``cnnfast bench`` result file: cases run, not run, errors,
                                 geomean speed-ups over eager and torch.compile
    check-out OUT                exit 0 if OUT holds at most 8 files, none more than 2 folders down and
                                 none over 16 MiB (what the device machine's tool brings back), else 1
    extension-name               the file name of cnnfast._C for the running Python (_C + EXT_SUFFIX)
"""
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INFO = "BUILD_INFO.json"
MAX_FILES, MAX_DEPTH, MAX_BYTES = 8, 2, 16 * 2**20


def sources_digest(repo=REPO) -> str:
    """sha256 over setup.py and every file under csrc/ (paths and contents, in sorted order)."""
    h = hashlib.sha256()
    paths = [repo / "setup.py"] + sorted(p for p in (repo / "csrc").rglob("*") if p.is_file())
    for path in paths:
        h.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def extension_name() -> str:
    """The file name of ``cnnfast._C`` for the running Python: ``_C.cpython-312-x86_64-linux-gnu.so``."""
    return "_C" + sysconfig.get_config_var("EXT_SUFFIX")


def _commit():
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("CNNFAST_COMMIT")


def write_info(directory, archs):
    import torch
    info = {"extension": extension_name(), "python": sys.version.split()[0], "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "archs": [a.strip().replace(".", "") for a in archs.split(";")
                                                         if a.strip()],
            "sources_sha256": sources_digest(), "commit": _commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (Path(directory) / INFO).write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info))
    return 0


def prebuilt_problem(directory, arch=None):
    """None if ``directory`` holds an extension usable here (for compute capability ``arch``, when
    given), else a sentence saying why not. Whether it loads is for the import that follows to show."""
    directory = Path(directory)
    if not (directory / INFO).is_file():
        return f"no {INFO} there"
    info = json.loads((directory / INFO).read_text())
    if info.get("extension") != extension_name() or not (directory / extension_name()).is_file():
        return f"it holds {info.get('extension')}, this Python needs {extension_name()}"
    import torch
    if info.get("torch") != torch.__version__:
        return f"built against torch {info.get('torch')}, this is torch {torch.__version__}"
    if info.get("sources_sha256") != sources_digest():
        return f"built from other sources (commit {info.get('commit')}): csrc/ or setup.py changed since"
    if arch and arch not in info.get("archs", []):
        return f"built for sm_{', sm_'.join(info.get('archs', []))}, this GPU is sm_{arch}"
    return None


def check_prebuilt(directory, arch=None):
    problem = prebuilt_problem(directory, arch)
    print(f"prebuilt {directory}: " + (problem or "matches this Python, torch, sources"
                                        + (f" and sm_{arch}" if arch else "")))
    return 1 if problem else 0


def suite_line(path):
    """Cases run / not run / with errors, and the geomean speed-ups (over eager, over torch.compile), of one result file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        print(f"no results ({type(e).__name__})")
        return 1
    cases = data.get("cases", [])
    errors = sum(1 for r in cases if "error" in r) + sum(1 for r in cases for p in r.get("providers", {}).values()
                                                         if "error" in p)
    parts = [f"{len(cases)} cases run, {len(data.get('not_run', []))} not run, {errors} errors"]
    for suite, providers in data.get("geomean", {}).items():
        parts.append(f"{suite} geomean: " + ", ".join(
            f"{name} {v['geomean']:.2f}x" for name, v in providers.items()))
    print("; ".join(parts))
    return 0


def check_out(out):
    """At most MAX_FILES files under ``out``, none deeper than MAX_DEPTH folders or larger than MAX_BYTES."""
    out = Path(out)
    files = sorted(p for p in out.rglob("*") if p.is_file() or p.is_symlink())
    problems = []
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files (at most {MAX_FILES})")
    for p in files:
        rel = p.relative_to(out)
        if len(rel.parts) - 1 > MAX_DEPTH:
            problems.append(f"{rel} is more than {MAX_DEPTH} folders down")
        if p.is_symlink() or not p.is_file():
            problems.append(f"{rel} is not a plain file")
        elif p.stat().st_size > MAX_BYTES:
            problems.append(f"{rel} is {p.stat().st_size / 2**20:.1f} MiB (at most {MAX_BYTES // 2**20})")
    largest = max((p.stat().st_size for p in files if p.is_file()), default=0)
    print(f"{len(files)} files in {out}, largest {largest / 2**20:.2f} MiB: "
          + ("; ".join(problems) if problems else "within the limits (8 files, 2 folders down, 16 MiB each)"))
    return 1 if problems else 0


COMMANDS = {"write-info": write_info, "check-prebuilt": check_prebuilt, "suite-line": suite_line,
            "check-out": check_out, "extension-name": lambda: print(extension_name()) or 0}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main())
