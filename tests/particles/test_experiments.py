"""The particle experiments produce their files and the numbers they claim."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from sympformer.particles.experiments import animate, converge, preserve, svgd


def test_converge_quadratic_control_meets_the_acceleration_target(tmp_path):
    summary = converge.run(tmp_path, problems=["quadratic"], kappas=[100], seeds=5, max_calls=3000, progress=False)
    mean, low, high = summary["ratios"][("quadratic κ=100", "accelerated kick-drift")]
    assert high <= 0.2  # accelerated/classical oracle calls to reach 1e-3, every seed (DESIGN target)
    for name in ("converge.csv", "hits.csv", "converge.md", "converge_quadratic_kappa100.png"):
        assert (tmp_path / name).is_file(), name
    assert "calls to 1e-3" in (tmp_path / "converge.md").read_text()


def test_preserve_matches_oracle_and_flags_softmax(tmp_path):
    summary = preserve.run(tmp_path, n=300, steps=60, progress=False)
    assert summary["oracle_error"]["gaussian"] <= 1e-10 and summary["oracle_error"]["t"] <= 1e-10
    assert summary["affine_residual"]["softmax"] > 1e-3
    assert (tmp_path / "preserve.png").is_file() and (tmp_path / "preserve.csv").is_file()


def test_svgd_identity(tmp_path):
    summary = svgd.run(tmp_path, n=6, steps=60, progress=False)
    assert summary["max_deviation"] <= 1e-12 and summary["svgd_contrast"] > 1e-2
    assert (tmp_path / "svgd.png").is_file()


def test_animate_writes_a_gif(tmp_path):
    summary = animate.run(tmp_path, calls=8, progress=False)
    with Image.open(tmp_path / "animate.gif") as gif:
        assert gif.n_frames == 9
    assert summary["final_gaps"][1] < summary["final_gaps"][0]


def test_cli_lists_the_experiments():
    result = subprocess.run(
        [sys.executable, "-m", "sympformer", "particles", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for name in ("converge", "preserve", "animate", "svgd"):
        assert name in result.stdout
