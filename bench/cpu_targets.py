"""CPU benchmark of the C++ extension against stock PyTorch eager, side by side in one run.

    python -m cnnfast.bench.cpu_targets [--threads 2] [--min-run-time 2.0] [--rounds 5]

Rows: the Net's two fused blocks ``max_pool2d(relu(conv2d(x)), 2)`` (forward, batch 64 and 256) and a
full Net training step (forward, backward, SGD) at batch 256, plus the activation memory autograd
saves for backward. Medians from torch.utils.benchmark, stock and cnnfast timed in alternating rounds
(a slow spell of a shared machine hits both); every timed cnnfast result is first checked against
stock PyTorch.
"""
import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import cnnfast
import cnnfast.functional as cf
from cnnfast.models import Net, TorchNet


def _median_ms(fn, min_run_time):
    # Timer runs on one thread unless told otherwise: time with the threads torch was given.
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _side_by_side(stock, fast, min_run_time, rounds):
    """Medians (ms) of `stock` and `fast`, timed in alternating rounds so that a slow spell of the
    machine hits both alike; each value is the median over the rounds of each round's median."""
    stock(), fast()
    a, b = [], []
    for _ in range(rounds):
        a.append(_median_ms(stock, min_run_time / rounds))
        b.append(_median_ms(fast, min_run_time / rounds))
    return statistics.median(a), statistics.median(b)


def _saved_bytes(model, x, y):
    """Bytes of tensors autograd saves for backward in one forward, parameters and the input excluded."""
    skip = {p.data_ptr() for p in model.parameters()} | {x.data_ptr()}
    seen = {}

    def pack(t):
        if t.data_ptr() not in skip:
            seen[t.data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x), y)
    return sum(seen.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=2.0, help="seconds per case and side")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per case")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, cnnfast CPU engine: "
          f"{cnnfast.backends._extension().cpu_isa()}")
    rows = []
    for name, c, k, hw in (("block1 3->6, 32x32", 3, 6, 32), ("block2 6->16, 15x15", 6, 16, 15)):
        for batch in (64, 256):
            x, w, b = torch.randn(batch, c, hw, hw), torch.randn(k, c, 3, 3) * 0.3, torch.randn(k) * 0.1
            stock = lambda: F.max_pool2d(F.relu(F.conv2d(x, w, b)), 2)  # noqa: E731
            fast = lambda: cf.conv_relu_maxpool2d(x, w, b, pool_kernel_size=2, backend="cpu")  # noqa: E731
            torch.testing.assert_close(fast(), stock(), atol=1e-4, rtol=1e-4)
            rows.append((f"fused forward {name}, batch {batch}",
                         *_side_by_side(stock, fast, args.min_run_time, args.rounds)))

    batch = 256
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    ref, net = TorchNet(), Net(backend="cpu")
    net.load_state_dict(ref.state_dict())
    torch.testing.assert_close(net(x), ref(x), atol=1e-4, rtol=1e-4)

    def step(model, opt):
        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return run

    opt_ref = torch.optim.SGD(ref.parameters(), lr=1e-3, momentum=0.9)
    opt_net = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    rows.append((f"Net training step, batch {batch}",
                 *_side_by_side(step(ref, opt_ref), step(net, opt_net), args.min_run_time, args.rounds)))

    print(f"{'case':42s} {'stock eager ms':>15s} {'cnnfast cpu ms':>15s} {'speed-up':>9s}")
    for case, t_ref, t_fast in rows:
        print(f"{case:42s} {t_ref:15.3f} {t_fast:15.3f} {t_ref / t_fast:8.2f}x")
    m_ref, m_net = _saved_bytes(ref, x, y), _saved_bytes(net, x, y)
    print(f"{'activation memory saved for backward, MiB':42s} {m_ref / 2**20:15.2f} {m_net / 2**20:15.2f} "
          f"{100 * (1 - m_net / m_ref):7.1f}% less")


if __name__ == "__main__":
    main()
