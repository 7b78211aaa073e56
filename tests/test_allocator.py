"""The opt-in allocator setting: with SYMPFORMER_CPU_ALLOCATOR=tuned freed large blocks stay in the
process, so allocating them again costs no page faults; by default nothing changes (checked in fresh
processes: the setting is per process and cannot be undone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sympformer.allocator import ENV, apply_allocator_choice

PROBE = r"""
import json, resource, torch
from sympformer.allocator import apply_allocator_choice
tuned = apply_allocator_choice()
def faults_of_one_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB, like the fused head's logit chunk, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(3):  # the heap grows to its high-water mark (a few rounds: the blocks are aligned)
    faults_of_one_step()
print(json.dumps({"tuned": tuned, "faults": faults_of_one_step()}))
"""

glibc = pytest.mark.skipif(
    sys.platform != "linux" or "glibc" not in " ".join(__import__("platform").libc_ver()),
    reason="glibc only",
)


def probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", ENV)}
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env={**clean, **env}, timeout=120, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_allocator_reuses_freed_blocks_without_page_faults():
    pages = 4 * 16 * 2**20 * 4 // 4096  # what four fresh 64 MiB blocks fault in
    system, tuned, default = probe(**{ENV: "system"}), probe(**{ENV: "tuned"}), probe()
    assert not system["tuned"] and tuned["tuned"] and not default["tuned"]
    assert default["faults"] > pages // 2
    assert system["faults"] > pages // 2  # glibc maps and unmaps every block
    assert tuned["faults"] < pages // 50


@glibc
def test_own_malloc_settings_are_left_alone():
    assert not probe(**{ENV: "tuned", "MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": "131072"})["tuned"]


def test_unknown_choice_is_an_error(monkeypatch):
    monkeypatch.setenv(ENV, "jemalloc")
    with pytest.raises(ValueError, match="'system' .* or 'tuned'"):
        apply_allocator_choice()


def test_the_command_line_reports_a_bad_choice_and_runs_nothing(monkeypatch, capsys):
    from sympformer.cli import main

    monkeypatch.setenv(ENV, "jemalloc")
    assert main(["audit", "causality"]) == 2  # parsed, then refused before the audit runs
    assert "SYMPFORMER_CPU_ALLOCATOR='jemalloc'" in capsys.readouterr().err
