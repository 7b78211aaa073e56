"""Statistics against scipy, the parameter-matched control, reports from synthetic runs, the
comparison grid (skip finished runs, refuse leaking architectures) and a demo smoke run."""

from __future__ import annotations

import argparse
import json

import pytest
from scipy import stats as scipy_stats

from helpers import tiny_config
from sympformer.analysis import build_report
from sympformer.analysis.compare import LeakingArchitecture, run_comparison
from sympformer.analysis.stats import holm, paired_t_test, t_quantile, t_two_sided_p
from sympformer.nn import SympFormerConfig, SympFormerLM

A = [2.659, 2.701, 2.612, 2.645, 2.683]
B = [2.574, 2.622, 2.531, 2.585, 2.601]


def test_paired_t_test_matches_scipy():
    ours = paired_t_test(A, B)
    ref = scipy_stats.ttest_rel(A, B)
    interval = ref.confidence_interval(0.95)
    assert ours.t == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-9)


@pytest.mark.parametrize(("t", "df"), [(0.3, 1), (2.1, 2), (-4.0, 4), (1.96, 30), (12.0, 7)])
def test_t_distribution_matches_scipy(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(2 * scipy_stats.t.sf(abs(t), df), rel=1e-10)
    assert t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-10)


def test_holm_matches_its_definition():
    p = [0.01, 0.04, 0.03, 0.2, 0.001]
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    brute = [0.0] * m
    for rank, i in enumerate(order):  # max over the more significant ones of (m − rank) p, capped at 1
        brute[i] = min(1.0, max((m - r) * p[order[r]] for r in range(rank + 1)))
    assert holm(p) == pytest.approx(brute)
    assert holm([0.5, 0.6]) == [1.0, 1.0]


def test_b_cap_has_the_momentum_models_parameters_minus_block_scalars():
    shape = dict(vocab_size=50304, n_layer=4, n_head=4, n_embd=64, block_size=128)
    count = {a: SympFormerLM(SympFormerConfig(**shape, arch=a)).num_parameters() for a in ("B_cap", "Y", "H0", "B")}
    # per block: LN_v (64 weights) + the scalars β₁ γ₁ μ₂ β₂ γ₂ (+ μ₁ for Y)
    assert count["Y"] - count["B_cap"] == 4 * (64 + 6)
    assert count["H0"] - count["B_cap"] == 4 * (64 + 5)
    assert count["B_cap"] - count["B"] == 64 * (50304 + 128)


def fake_run(root, arch, seed, final, wall=10.0, step_time=0.01):
    folder = root / "runs" / f"{arch}-s{seed}"
    folder.mkdir(parents=True)
    summary = {
        "arch": arch,
        "seed": seed,
        "final_val_loss": final,
        "parameters": 1000,
        "steps": 100,
        "tokens": 4000,
        "wall_time_s": wall,
        "step_time_s_median": step_time,
        "tokens_per_s": 400.0,
        "attention_calls_per_token": 4,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = [
        "step,tokens,train_loss,val_loss,lr,step_time_s,tokens_per_s,wall_s",
        "0,0,,5.5,0,,,0",
        f"50,2000,4.5,{final + 0.5},0.001,0.01,400,{wall / 2}",
        f"100,4000,4.0,{final},0.001,0.01,400,{wall}",
    ]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    (folder / "dynamics.csv").write_text("step,layer,name,value\n100,0,beta1,0.8\n100,1,beta1,0.7\n")


def test_report_from_synthetic_runs(tmp_path):
    finals = {"B": [3.00, 3.10, 3.05], "B_cap": [2.99, 3.08, 3.05], "H0": [2.90, 3.00, 2.96], "R2": [3.20, 3.31, 3.24]}
    for arch, values in finals.items():
        for seed, value in zip((1, 2, 3), values, strict=True):
            fake_run(tmp_path, arch, seed, value, wall={"B": 10.0, "B_cap": 10.5, "H0": 11.0, "R2": 20.0}[arch])
    result = build_report(tmp_path, "B", ["B", "B_cap", "H0", "R2"])
    by_arch = {c["arch"]: c for c in result["comparisons"]}
    expected = paired_t_test(finals["H0"], finals["B"])
    assert by_arch["H0"]["mean_difference"] == pytest.approx(expected.mean_difference)
    assert by_arch["H0"]["p"] == pytest.approx(expected.p)
    family = ("B_cap", "H0", "R2")
    assert [by_arch[a]["p_holm"] for a in family] == pytest.approx(holm([by_arch[a]["p"] for a in family]))
    assert by_arch["R2"]["verdict"] == "WORSE" and by_arch["H0"]["verdict"] == "better"
    control = {c["arch"]: c for c in result["control_comparisons"]}
    assert set(control) == {"H0", "R2"}  # against the parameter-matched control, B left out
    assert control["H0"]["mean_difference"] == pytest.approx(
        paired_t_test(finals["H0"], finals["B_cap"]).mean_difference
    )
    assert result["equal_wall_clock"]["seconds"] == pytest.approx(10.0)
    text = (tmp_path / "report.md").read_text()
    assert "WORSE" in text and "equal wall-clock" in text and "3.0500 (0.0500)" in text
    assert "against B_cap" in text
    for name in ("report.json", "loss_vs_tokens.png", "loss_vs_wall.png", "dynamics.png"):
        assert (tmp_path / name).is_file()


def test_compare_skips_finished_runs_and_refuses_leaks(tiny_data, tmp_path, monkeypatch):
    _, config = tiny_config(tiny_data, max_steps=4, eval_interval=2)
    logs = []
    result = run_comparison(config, ["B", "H0"], 2, tmp_path, include_cap=False, progress=False, log=logs.append)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["B-s1337", "B-s1338", "H0-s1337", "H0-s1338"]
    assert (tmp_path / "report.md").is_file() and result["archs"] == ["B", "H0"]
    import sympformer.analysis.compare as compare_module

    monkeypatch.setattr(compare_module, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    logs.clear()
    run_comparison(config, ["B", "H0"], 2, tmp_path, include_cap=False, progress=False, log=logs.append)
    assert sum("skipped" in line for line in logs) == 4
    with pytest.raises(LeakingArchitecture, match="v1_global_euler"):
        run_comparison(config, ["B", "v1_global_euler"], 1, tmp_path / "leak", progress=False, log=logs.append)
    assert not (tmp_path / "leak" / "runs").exists()


def test_demo_smoke(tiny_data, tmp_path, capsys):
    from sympformer.commands import demo

    args = argparse.Namespace(
        out=str(tmp_path / "demo"),
        steps=4,
        seeds=2,
        quiet=True,
        set=[
            f"data.dir={tiny_data}",
            "data.corpus=null",
            "train.batch_size=4",
            "model.block_size=32",
            "train.eval_batches=2",
        ],
    )
    assert demo.run(args) == 0
    out = capsys.readouterr().out
    assert "leaks, as it must" in out and "| R2 |" in out
    for name in (
        "demo.md",
        "audit.md",
        "compare/report.md",
        "particles/converge/converge.md",
        "particles/preserve/preserve.png",
    ):
        assert (tmp_path / "demo" / name).exists(), name
