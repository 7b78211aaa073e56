"""The foundation's promises: CLI entry point, network guard, helpers."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch

import sympformer
from sympformer.utils import atomic_write_text, default_dtype, seed_everything


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sympformer", *args], capture_output=True, text=True, timeout=120)


def test_version_matches_package():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"sympformer {sympformer.__version__}"


def test_help_lists_existing_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("demo", "particles", "data", "train", "sample", "audit"):
        assert name in result.stdout


def test_unknown_subcommand_is_a_clear_error():
    result = run_cli("no-such-command")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr


def test_network_guard_refuses_public_addresses():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        with pytest.raises(RuntimeError, match="network connection"):
            sock.connect(("93.184.216.34", 80))


def test_network_guard_allows_loopback():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.connect(server.getsockname())
    server.close()


def test_seed_everything_is_reproducible():
    seed_everything(123)
    a = torch.randn(5)
    seed_everything(123)
    assert torch.equal(a, torch.randn(5))


def test_default_dtype_scope_restores():
    before = torch.get_default_dtype()
    with default_dtype(torch.float64):
        assert torch.empty(1).dtype == torch.float64
    assert torch.get_default_dtype() == before


def test_atomic_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]
