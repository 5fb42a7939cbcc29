"""The implicit-GEMM view of conv2d's three matrix products, written once.

Like CUTLASS's ``implicit_gemm_problem_size(operator, problem)``: for a conv2d problem (x N x C x H x W,
weight K x C/groups x R x S, output N x K x OH x OW) each direction is, per group, one GEMM
``out[M, N] = sum over the reduction index of A[M, red] * B[red, N]``:

    direction    M (rows)          N (columns)        reduction (GEMM K)   A, B
    forward      N·OH·OW pixels    K/groups channels  C/groups·R·S         im2col(x), weight
    input_grad   N·H·W pixels      C/groups channels  K/groups·R·S         dy gathered, weight
    weight_grad  K/groups channels C/groups·R·S       N·OH·OW pixels       dy, im2col(x)

Pixel rows decode with ``_common.pixel_decode``, reduction indices over (channel, r, s) with
``_common.reduction_decode``. The launchers size their grids and choose their configs from these
numbers (``configs.py``); the kernels receive the dimensions the numbers are made of.
"""
from typing import NamedTuple

FORWARD, INPUT_GRAD, WEIGHT_GRAD = "forward", "input_grad", "weight_grad"


class ConvProblem(NamedTuple):
    """The sizes of one conv2d: input (n, c, h, w), weight (k, c // groups, r, s), output (oh, ow)."""
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    oh: int
    ow: int
    groups: int


class GemmSize(NamedTuple):
    """One group's GEMM: an M x N output reduced over ``red`` (the GEMM's K)."""
    M: int
    N: int
    red: int


def implicit_gemm_problem_size(direction: str, p: ConvProblem) -> GemmSize:
    """M, N and the reduction length of ``direction``'s GEMM per group (see the module table)."""
    cg, kg = p.c // p.groups, p.k // p.groups
    if direction == FORWARD:
        return GemmSize(p.n * p.oh * p.ow, kg, cg * p.r * p.s)
    if direction == INPUT_GRAD:
        return GemmSize(p.n * p.h * p.w, cg, kg * p.r * p.s)
    if direction == WEIGHT_GRAD:
        return GemmSize(kg, cg * p.r * p.s, p.n * p.oh * p.ow)
    raise ValueError(f"unknown conv2d direction {direction!r}")
