"""Test configuration: offline variables, the network guard, seeding and float64 helpers."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest
import torch

from sympformer.data import prepare

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths and other non-IP families never leave the machine
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: refuse


class NetworkAccessError(RuntimeError):
    """Raised when a test tries to reach anything but the loopback interface."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that opens a socket to a non-loopback address (torchrun's 127.0.0.1 is allowed)."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded(real):
        def connect(self, address, *args, **kwargs):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
                raise NetworkAccessError(f"test tried to open a network connection to {address!r}")
            return real(self, address, *args, **kwargs)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    yield


@pytest.fixture
def f64():
    """Run the test body with float64 as torch's default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield torch.float64
    torch.set_default_dtype(previous)


TEXT = (
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small byte-level shard folder (two text files, ~40 kB)."""
    root = tmp_path_factory.mktemp("tiny-data")
    for i in range(2):
        (root / f"text{i}.txt").write_text("".join(f"{j}: {TEXT}" for j in range(120)))
    out = root / "shards"
    prepare(f"files:{root}/*.txt", "bytes", out, progress=False)
    return out
