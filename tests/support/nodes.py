"""Two "nodes" on this machine: two torchrun launchers, one process each, meeting through a c10d
rendezvous on localhost, as two machines of a cluster would (gloo on the CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_node_command(args: list[str], port: int) -> list[str]:
    """``torchrun --nnodes 2`` for one node: ``ksr ARGS`` in one process on this node."""
    return [
        str(BIN / "torchrun"),
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        f"ksr-test-{port}",
        "--max-restarts",
        "0",
        "--no-python",
        str(BIN / "ksr"),
        *map(str, args),
    ]


def run_two_nodes(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> list[str]:
    """Run ``ksr ARGS`` as two nodes; returns each node's stdout. Skips the test when torchrun
    is missing or the two launchers cannot meet (no local TCP, a sandbox); fails on any other
    error, with the node's stderr."""
    if not (BIN / "torchrun").exists():
        pytest.skip("torchrun is not installed beside this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    port = free_port()
    nodes = [
        subprocess.Popen(
            two_node_command(args, port), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = []
    try:
        for node in nodes:
            outs.append(node.communicate(timeout=timeout))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (_out, err) in zip(nodes, outs, strict=True):
        if node.returncode and any(k in err for k in ("RendezvousConnectionError", "RendezvousTimeoutError")):
            pytest.skip(f"the two torchrun launchers could not meet: {err.strip().splitlines()[-1]}")
        assert node.returncode == 0, err[-3000:]
    return [out for out, _ in outs]
