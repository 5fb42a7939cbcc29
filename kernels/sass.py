"""The machine code of a compiled kernel, summarised: its main loop's instruction profile.

``profile(sass)`` reads the SASS that ``cuobjdump -sass`` prints for one kernel and finds its loops
(a branch to an earlier address closes one). The *main loop* is the loop with the most tensor-core
work (``HGMMA`` on sm_90, ``HMMA`` before it); a kernel without tensor-core instructions takes the loop
with the most FMAs and loads instead, and among equals the innermost. Of that loop it counts:

    instructions     every instruction from the loop's first to its closing branch (NOPs left out)
    hgmma_units      ``HGMMA`` instructions in units of 64 columns (``HGMMA.64x128x16`` counts two), the
                     unit in which one wgmma keeps an SM's tensor cores busy for about 32 cycles
    hmma             ``HMMA`` instructions (mma.sync; sm_80's tensor cores, and sm_90's without wgmma)
    per_tc           instructions per tensor-core unit (per 64-column HGMMA, else per HMMA): the issue
                     slots each unit of tensor-core work costs; CUTLASS-class loops are near 40
    ldgsts, utmaldg  asynchronous copies global -> shared (cp.async; TMA)
    loads            global loads and async copies by width in bytes, e.g. ``{"LDGSTS.16": 4, "LDG.2": 8}``
    barriers         ``BAR`` (``bar.sync``) and ``SYNCS`` (mbarrier) instructions
    shared           shared-memory loads and stores (``LDS``, ``STS``, ``LDSM``)
    fma              ``FFMA`` / ``HFMA2`` / ``DFMA``

No GPU is needed; nothing here replaces a GPU run (memory stalls are invisible in SASS).
"""
from __future__ import annotations

import re
from collections import Counter

__all__ = ["parse", "loops", "profile", "resident_warps"]

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.+?)\s*;")
_TARGET = re.compile(r"\b0x([0-9a-f]+)\b")
_HGMMA_N = re.compile(r"^HGMMA\.\d+x(\d+)x\d+")

# Registers are allocated per warp in units of 256; shared memory per block in units of 128 B with 1 KiB
# reserved by the system (CUDA occupancy calculator, compute capability 8.0 / 9.0).
_SM = {80: dict(shared=167936, warps=64, blocks=32), 86: dict(shared=101376, warps=48, blocks=16),
       89: dict(shared=101376, warps=48, blocks=24), 90: dict(shared=233472, warps=64, blocks=32)}
REGISTER_FILE = 65536


def parse(sass: str, function: str | None = None) -> list[tuple[int, str]]:
    """``(address, instruction)`` for every instruction of ``function`` (the first one when None) in
    ``cuobjdump -sass`` output; the predicate (``@P0``) is kept in the text."""
    out, inside = [], function is None
    for line in sass.splitlines():
        if "Function :" in line:
            if out:
                break
            inside = function is None or line.split("Function :", 1)[1].strip() == function
            continue
        m = _LINE.search(line)
        if inside and m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def _opcode(text: str) -> str:
    parts = text.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


def loops(instructions) -> list[tuple[int, int]]:
    """Index ranges ``(first, last)`` (inclusive) of every loop: a branch back to an earlier address."""
    index = {addr: i for i, (addr, _) in enumerate(instructions)}
    found = []
    for i, (addr, text) in enumerate(instructions):
        if _opcode(text).split(".")[0] != "BRA":
            continue
        m = _TARGET.search(text.split(None, 1)[-1])
        # Strictly earlier: every kernel ends with a branch to itself after its EXIT (never reached).
        if m and int(m.group(1), 16) < addr and int(m.group(1), 16) in index:
            found.append((index[int(m.group(1), 16)], i))
    return sorted(set(found))


def _load_key(op: str) -> str | None:
    base, mods = op.split(".")[0], op.split(".")[1:]
    if base not in ("LDG", "LDGSTS", "UTMALDG"):
        return None
    if base == "UTMALDG":
        return "UTMALDG"
    width = 4
    for m in mods:
        if m in ("128", "64", "32"):
            width = int(m) // 8
        elif m in ("U8", "S8"):
            width = 1
        elif m in ("U16", "S16"):
            width = 2
    return f"{base}.{width}"


def _count(instructions) -> dict:
    ops = [_opcode(t) for _, t in instructions]
    ops = [op for op in ops if op.split(".")[0] != "NOP"]
    bases = Counter(op.split(".")[0] for op in ops)
    hgmma = 0
    for op in ops:
        m = _HGMMA_N.match(op)
        if m:
            hgmma += int(m.group(1)) / 64
    loads = Counter(k for k in map(_load_key, ops) if k)
    tc = hgmma or bases["HMMA"]
    return {
        "instructions": len(ops),
        "hgmma_units": hgmma,
        "hmma": bases["HMMA"],
        "per_tc": round(len(ops) / tc, 1) if tc else None,
        "ldgsts": bases["LDGSTS"],
        "utmaldg": bases["UTMALDG"],
        "loads": dict(sorted(loads.items())),
        "barriers": bases["BAR"] + bases["SYNCS"],
        "shared": bases["LDS"] + bases["STS"] + bases["LDSM"],
        "fma": bases["FFMA"] + bases["HFMA2"] + bases["DFMA"],
    }


def profile(sass: str, function: str | None = None) -> dict:
    """The kernel's size and its main loop's profile (``main_loop`` None for a kernel without loops)."""
    instructions = parse(sass, function)
    if not instructions:
        raise ValueError(f"no SASS instructions found for {function or 'the first function'}")
    ranges = loops(instructions)
    stats = [(r, _count(instructions[r[0]:r[1] + 1])) for r in ranges]

    def weight(item):
        (first, last), c = item
        tc = c["hgmma_units"] or c["hmma"]
        inner = not any(o != (first, last) and first <= o[0] and o[1] <= last for o, _ in stats)
        return (tc, 0 if tc else c["fma"] + sum(c["loads"].values()), inner, -(last - first))

    main = max(stats, key=weight) if stats else None
    return {
        "kernel_instructions": len(instructions),
        "loops": len(ranges),
        "main_loop": None if main is None else dict(main[1], first=instructions[main[0][0]][0],
                                                      last=instructions[main[0][1]][0]),
    }


def resident_warps(regs: int, shared: int, num_warps: int, arch: int) -> int:
    """Warps of this kernel resident on one SM, limited by registers, shared memory and the SM's slots."""
    sm = _SM.get(arch, _SM[80 if arch < 90 else 90])
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = (REGISTER_FILE // regs_per_warp) // num_warps
    block_shared = -(-shared // 128) * 128 + 1024
    by_shared = sm["shared"] // block_shared
    blocks = min(by_regs, by_shared, sm["blocks"], sm["warps"] // num_warps)
    return blocks * num_warps
