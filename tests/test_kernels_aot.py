"""Every Triton kernel spec compiles ahead of time for sm_80 and sm_90 without spilling.

The suite runs with TRITON_INTERPRET=1, under which ``@triton.jit`` kernels cannot be compiled, so one
child process (``python -m cnnfast.kernels.aot --json``, the interpreter off) compiles everything
once per module run and the tests below read its report. Deselect with ``-m "not aot"``.
"""
import json

import pytest

from cnnfast.kernels import aot

pytestmark = pytest.mark.aot

ARCHS = (80, 90)
TIMEOUT_S = 1200


def _list_spec_names():
    """Spec names, from a child without the interpreter (some aot_specs() read JITFunction attributes)."""
    proc = aot.run_subprocess(["--list"], timeout=300)
    return proc.stdout.splitlines(), (proc.stderr.strip() if proc.returncode else None)


SPEC_NAMES, LIST_ERROR = _list_spec_names()


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    """``{(spec name, arch): row}`` from one compile of every spec in a child process."""
    path = tmp_path_factory.mktemp("aot") / "report.json"
    argv = ["--arch", *ARCHS, "--json", path]
    proc = aot.run_subprocess(argv, timeout=TIMEOUT_S)  # exit status 1 just means some spec failed
    if not path.exists():
        pytest.fail(f"the AOT inspection crashed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    report = json.loads(path.read_text())
    return {(row["name"], row["arch"]): row for row in report["results"]}


def test_every_kernel_module_lists_unique_specs():
    assert LIST_ERROR is None, f"listing aot_specs() failed:\n{LIST_ERROR}"
    assert SPEC_NAMES, "no kernel module lists any aot_specs()"
    assert len(SPEC_NAMES) == len(set(SPEC_NAMES)), "spec names must be unique across modules"


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("name", SPEC_NAMES)
def test_kernel_spec_compiles_without_spills(aot_report, name, arch):
    row = aot_report.get((name, arch))
    assert row is not None, f"{name} sm_{arch} is missing from the AOT report"
    assert row["error"] is None, f"{name} does not compile for sm_{arch}: {row['error']}"
    assert row["stack"] == 0 and row["local"] == 0, f"{name} on sm_{arch} uses local memory: {row}"
    assert row["spill_stores"] == 0 and row["spill_loads"] == 0, f"{name} on sm_{arch} spills: {row}"
    assert not row["problems"], f"{name} on sm_{arch}: {'; '.join(row['problems'])}"


# ---------------------------------------------------------------------------------------------------
# The call view: kernels compiled as the JIT compiles them for a real call

# A synthetic main loop in cuobjdump's format: two 64x128 wgmmas (four 64-column units), 16-byte
# cp.async copies, one 2-byte load, a barrier, a branch back to the loop's first instruction.
_SASS = """
        code for sm_90a
                Function : kern
        .headerflags    @"EF_CUDA_SM90"
        /*0000*/                   MOV R1, c[0x0][0x28] ;              /* 0x0 */
        /*0010*/                   LDG.E.U16 R2, desc[UR4][R4.64] ;    /* 0x0 */
        /*0020*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR6][R8.64] ;  /* 0x0 */
        /*0030*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3+0x80], desc[UR6][R10.64] ;  /* 0x0 */
        /*0040*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24 ;  /* 0x0 */
        /*0050*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12], R24, gsb0 ;  /* 0x0 */
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;        /* 0x0 */
        /*0070*/                   NOP ;                                /* 0x0 */
        /*0080*/              @P0  BRA 0x20 ;                           /* 0x0 */
        /*0090*/                   FFMA R5, R6, R7, R5 ;                /* 0x0 */
        /*00a0*/                   EXIT ;                               /* 0x0 */
        /*00b0*/                   BRA 0xb0 ;                           /* 0x0 */
"""


def test_sass_profile_counts_the_main_loops_instructions():
    from cnnfast.kernels import sass

    prof = sass.profile(_SASS, "kern")
    loop = prof["main_loop"]
    assert prof["kernel_instructions"] == 12 and prof["loops"] == 1  # the closing self-branch is no loop
    assert (loop["first"], loop["last"]) == (0x20, 0x80)
    assert loop["instructions"] == 6  # NOP left out
    assert loop["hgmma_units"] == 4 and loop["hmma"] == 0 and loop["per_tc"] == 1.5
    assert loop["ldgsts"] == 2 and loop["loads"] == {"LDGSTS.16": 2}
    assert loop["barriers"] == 1 and loop["fma"] == 0
    assert sass.profile(_SASS.replace("BRA 0x20", "BRA 0xa0"))["main_loop"] is None  # a forward branch


def test_resident_warps_are_limited_by_registers_shared_memory_and_slots():
    from cnnfast.kernels import sass

    assert sass.resident_warps(regs=64, shared=0, num_warps=4, arch=90) == 32  # 64 regs: 32 warps of 2048 regs
    assert sass.resident_warps(regs=128, shared=0, num_warps=4, arch=90) == 16
    assert sass.resident_warps(regs=32, shared=0, num_warps=4, arch=90) == 64  # the SM's 64 warp slots
    assert sass.resident_warps(regs=32, shared=100_000, num_warps=4, arch=90) == 8  # two blocks' shared memory
    assert sass.resident_warps(regs=255, shared=0, num_warps=8, arch=80) == 8  # one block: 8 x 8192 registers
    assert sass.resident_warps(regs=255, shared=0, num_warps=16, arch=80) == 0  # does not fit at all


# ResNet-18 layer1's 3x3 conv (64 -> 64 on 56x56) at batch 32, bfloat16 channels_last, training: the case
# whose forward kernels compile to 2-byte loads with unspecialised integers and to 16-byte cp.async as the
# JIT compiles them.
_RESNET_LAYER1 = "resnet18/layer1.0.conv1 ×4/"
# ResNet-18 layer2's first 3x3 conv (64 -> 128, stride 2): its input gradient runs by phases.
_RESNET_STRIDED = "resnet18/layer2.0.conv1/"
# ResNet-18's stem conv (3 -> 64, 7x7 stride 2): few input channels.
_RESNET_STEM = "resnet18/conv1/"
_CALL_ARGS = ["--arch", "90", "--dtype", "bfloat16", "--layout", "channels_last", "--direction", "fwd+bwd"]


@pytest.fixture(scope="module")
def call_report(tmp_path_factory):
    """Rows of the call view, from child processes: the Net's blocks (batch 64) and ResNet-18's layer1
    3x3 conv and layer2's strided one (batch 32), training, bfloat16 channels_last, sm_90, each
    launcher's own config; and the layer1 conv's forward with every config, bfloat16 and TF32, sm_80
    and sm_90."""
    tmp = tmp_path_factory.mktemp("aot-calls")
    rows = []
    resnet = ["--suite", "resnet18", "--batch", "32", "--case", _RESNET_LAYER1]
    for name, argv in (("net", [*_CALL_ARGS, "--heuristic", "--suite", "net", "--batch", "64"]),
                       ("resnet", [*_CALL_ARGS, "--heuristic", *resnet, "--case", _RESNET_STRIDED]),
                       # ResNet's stem conv (3 -> 64 7x7 stride 2), NCHW as models feed it, inference
                       ("stem", ["--arch", "90", "--dtype", "bfloat16,tf32", "--layout", "nchw", "--direction", "fwd",
                                 "--heuristic", "--suite", "resnet18", "--batch", "32", "--case", _RESNET_STEM]),
                       # every forward config the tuner may time there, the taps kernel's included
                       ("resnet-configs", ["--arch", "80", "90", "--dtype", "bfloat16,tf32", "--layout",
                                           "channels_last", "--direction", "fwd", *resnet])):
        path = tmp / f"{name}.json"
        proc = aot.run_subprocess([*argv, "--json", path, "--dump-dir", tmp / name], timeout=TIMEOUT_S)
        if not path.exists():
            pytest.fail(f"the call view crashed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        rows += json.loads(path.read_text())["results"]
    return rows, tmp


def test_call_view_compiles_every_launch_of_the_nets_blocks_without_spills(call_report):
    rows, _ = call_report
    net = [r for r in rows if r["case"].startswith("net/")]
    launchers = {r["launcher"] for r in net}
    assert launchers >= {"conv2d_forward", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad",
                         "max_pool2d_forward", "max_pool2d_backward", "conv_relu_maxpool2d_forward",
                         "conv_relu_maxpool2d_backward"}, launchers
    for r in net:
        assert r["error"] is None, f"{r['case']} {r['launcher']}: {r['error']}"
        assert not r["problems"], f"{r['case']} {r['launcher']} {r['kernel']}: {r['problems']}"
        assert r["resident_warps"] >= r["num_warps"], r
        assert r["main_loop"] is None or r["main_loop"]["instructions"] > 0


def test_call_view_compiles_every_forward_config_of_a_resnet_layer_without_spills(call_report):
    rows, _ = call_report
    forward = [r for r in rows if r["case"].startswith(_RESNET_LAYER1) and r["config"] is not None]
    assert {r["kernel"] for r in forward} >= {"_conv2d_forward_gemm_kernel", "_conv2d_forward_taps_kernel"}
    for r in forward:
        where = f"{r['case']} {r['kernel']} config {r['config']} sm_{r['arch']}"
        assert r["error"] is None, f"{where}: {r['error']}"
        assert not r["problems"], f"{where}: {r['problems']}"


def test_taps_forward_meets_its_machine_code_targets_on_sm_90(call_report):
    """The taps kernel's main loop on sm_90, at every config, in bfloat16 and TF32: wgmma fed by 16-byte
    cp.async, at most 48 instructions per 64-column HGMMA, at least 8 warps resident per SM."""
    rows, _ = call_report
    taps = [r for r in rows if r.get("kernel") == "_conv2d_forward_taps_kernel" and r["arch"] == 90]
    assert {r["dtype"] for r in taps} == {"bfloat16", "tf32"}, taps
    for r in taps:
        loop, where = r["main_loop"], f"{r['case']} config {r['config']}"
        assert loop["hgmma_units"] > 0 and loop["per_tc"] <= 48, f"{where}: {loop}"
        assert set(loop["loads"]) == {"LDGSTS.16"}, f"{where}: {loop['loads']}"
        assert r["resident_warps"] >= 8, f"{where}: {r['resident_warps']} warps per SM"


@pytest.mark.parametrize("case, input_grad", [(_RESNET_LAYER1, "_conv2d_input_grad_taps_kernel"),
                                               (_RESNET_STRIDED, "_conv2d_input_grad_phases_kernel")],
                         ids=["stride 1", "stride 2"])
def test_taps_gradients_are_the_heuristics_choice_and_meet_the_targets_on_sm_90(call_report, case, input_grad):
    """ResNet-18's 3x3 convs in bfloat16 channels_last, training: the launchers' own choice for the input
    gradient is the taps kernel (at stride 2 by phases) and for the weight gradient the taps kernel,
    at most 48 instructions per 64-column HGMMA, 16-byte cp.async only, at least 8 warps per SM."""
    rows, _ = call_report
    grads = [r for r in rows if r["case"].startswith(case) and r["config"] is None
             and r["launcher"] in ("conv2d_input_grad", "conv2d_weight_grad") and "reduce" not in r["kernel"]]
    assert {r["launcher"] for r in grads} == {"conv2d_input_grad", "conv2d_weight_grad"}, grads
    for r in grads:
        loop, where = r["main_loop"], f"{r['launcher']} {r['kernel']}"
        assert r["kernel"] == (input_grad if r["launcher"] == "conv2d_input_grad" else
                               "_conv2d_weight_grad_taps_kernel"), where
        assert loop["hgmma_units"] > 0 and loop["per_tc"] <= 48, f"{where}: {loop}"
        assert set(loop["loads"]) == {"LDGSTS.16"}, f"{where}: {loop['loads']}"
        assert r["resident_warps"] >= 8 and not r["problems"], f"{where}: {r}"


def test_few_channels_forward_meets_the_targets_on_sm_90_from_nchw(call_report):
    """ResNet-18's stem conv (3 input channels) from NCHW, bfloat16 and TF32: the launcher's own choice
    is the few-channels kernel (channels padded to 4, a filter row per step), wgmma fed by 16-byte
    cp.async only, at most 48 instructions per 64-column HGMMA, at least 8 warps per SM."""
    rows, _ = call_report
    stem = [r for r in rows if r["case"].startswith(_RESNET_STEM) and r["launcher"] == "conv2d_forward"
            and r["kernel"].startswith("_conv2d_forward")]
    assert {r["dtype"] for r in stem} == {"bfloat16", "tf32"}, stem
    for r in stem:
        loop, where = r["main_loop"], f"{r['case']} {r['kernel']}"
        assert r["kernel"] == "_conv2d_forward_few_channels_kernel", where
        assert loop["hgmma_units"] > 0 and loop["per_tc"] <= 48, f"{where}: {loop}"
        assert set(loop["loads"]) == {"LDGSTS.16"}, f"{where}: {loop['loads']}"
        assert r["resident_warps"] >= 8 and not r["problems"], f"{where}: {r}"


def test_call_view_compiles_with_the_jits_specialisation(call_report):
    """The JIT gives the channels_last forward's 16-byte-aligned pointers and strides divisible by 16
    their hints: the main loop copies operands with 16-byte cp.async and runs wgmma (compiled with
    unspecialised integers, the same kernels gather 2-byte elements, and the taps kernel spills)."""
    rows, tmp = call_report
    forward = [r for r in rows if r["case"].startswith(_RESNET_LAYER1) and r["launcher"] == "conv2d_forward"
               and r["config"] is None]
    assert len(forward) == 1, forward
    loop = forward[0]["main_loop"]
    assert loop is not None and loop["hgmma_units"] > 0, loop
    assert loop.get("loads", {}).get("LDGSTS.16", 0) > 0, loop
    assert forward[0]["constexprs"].get("BLOCK_M"), forward[0]
    cubins = list((tmp / "resnet").glob("*.cubin"))
    assert any(p.name.startswith(forward[0]["kernel"] + "__heuristic__") for p in cubins), cubins
