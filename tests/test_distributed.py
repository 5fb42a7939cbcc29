"""``cnnfast train`` under ``torchrun``: two CPU processes with gloo on the loopback interface."""
import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(state: dict) -> str:
    """The same fingerprint ``cnnfast train`` records for each process's weights."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="this torch was built without gloo")
def test_two_gloo_processes_end_with_identical_weights_and_a_falling_loss(tmp_path):
    out = tmp_path / "run"
    port = _free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "cnnfast.train", "--device", "cpu", "--no-progress", "--out", str(out),
               "--model", "net-bn", "--dropout", "0", "--lr", "0.02", "--batch-size", "8",
               "--train-size", "64", "--val-size", "20", "--epochs", "5", "--augment"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("epoch   5/5") == 1                           # only rank 0 prints
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    dist = metrics["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo"
    digests = dist["weights_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert _digest(ckpt["model"]) == digests[0]                            # what rank 0 saved is what both hold
    assert len(ckpt["rng"]) == 2                                           # each process's RNG state
    losses = [row["train_loss"] for row in metrics["epochs"]]
    assert losses[-1] < losses[0] - 0.1, losses
    assert sorted(os.listdir(out)) == ["best.pt", "checkpoint.pt", "curves.png", "metrics.csv", "metrics.json"]
