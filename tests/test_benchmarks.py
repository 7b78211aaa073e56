"""The benchmark harness: coverage of the architectures, interleaving, and RESULTS.md sections."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sympformer.benchmarking import interleaved_times, section_rows, table_number, write_section
from sympformer.nn import CAUSAL_ARCHS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_every_causal_architecture_has_a_step_time_shape():
    from blocks_step_time import SHAPES

    benchmarked = {arch for _, _, archs, _ in SHAPES.values() for arch in archs}
    assert set(CAUSAL_ARCHS) <= benchmarked
    for _, _, archs, reference in SHAPES.values():
        assert reference in archs


def test_section_keys_name_the_sections_the_scripts_wrote():
    """blocks_section and compile_section, which compile_kernels.py and plot_results.py use to find the
    step-time sections, give the keys under which the scripts wrote benchmarks/RESULTS.md."""
    from blocks_step_time import blocks_section, compile_section

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md").read_text()
    keys = [blocks_section(s, "cpu") for s in ("primary", "heavy", "linear", "v1")]
    keys += [blocks_section("heavy", "cpu", checkpointing=True), blocks_section("primary", "cuda:0", "bf16")]
    keys += [compile_section(s, "cuda", "bf16", "reduce-overhead") for s in ("primary", "heavy", "linear", "v1")]
    keys += [
        compile_section("primary", "cpu"),
        compile_section("v1", "cpu", mode="default"),
        compile_section("heavy", "cpu"),
        compile_section("primary", "cuda"),
    ]
    assert [key for key in keys if f"<!-- section:{key} -->" not in text] == []


def test_interleaving_rotates_the_order_every_round():
    calls: list[str] = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved_times(contenders, rounds=3, repeats=2, warmup=1)
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}
    measured = calls[3:]  # after one warm-up call each
    assert measured == list("aabbcc") + list("bbccaa") + list("ccaabb")


def test_kernel_rows_time_a_question_s_variants_interleaved():
    """benchmarks/kernels.py: one row per variant, in the given order, each the median of its calls, which
    alternate with the other variants' (a sequential timing let a slow phase fall on one variant)."""
    from kernels import interleaved_rows

    calls: list[str] = []
    variants = {label: (lambda label=label: calls.append(label)) for label in ("first", "… second")}
    rows = [["earlier", 1.0]]
    interleaved_rows(rows, variants, rounds=4)
    assert [label for label, _ in rows] == ["earlier", "first", "… second"]
    assert all(ms >= 0 for _, ms in rows[1:])
    assert calls[2:] == ["first", "… second", "… second", "first"] * 2  # after one warm-up call each


def test_sections_are_replaced_in_place_and_others_kept(tmp_path):
    results = tmp_path / "RESULTS.md"
    write_section(results, "one", "First", "figures 1")
    write_section(results, "two", "Second", "figures 2")
    write_section(results, "one", "First", "figures 1, rerun")
    text = results.read_text()
    assert text.count("<!-- section:one -->") == 1 and text.count("<!-- section:two -->") == 1
    assert "figures 1, rerun" in text and "figures 1\n" not in text and "figures 2" in text
    assert text.index("section:one") < text.index("section:two")  # the rerun kept its place
    assert "- machine:" in text and "- command:" in text and "date 20" in text


def test_section_rows_reads_a_shape_table_with_repeated_column_names(tmp_path):

    results = tmp_path / "RESULTS.md"
    table = "| arch | MiB | × B | RSS | × B |\n|---|---|---|---|---|\n"
    table += "| B | 10.0 | 1.00 | — | — |\n| H0 | 13.1 | 1.31 | 9 | 0.9 |"
    write_section(results, "memory-cpu", "Memory", f"### shape `primary`: {{}}\n\n{table}\n\n### shape `v1`\n\n{table}")
    write_section(results, "other", "Other", "| arch | × B |\n|---|---|\n| X | 7 |")
    rows = section_rows(results, "memory-cpu", "v1")
    assert [row["arch"] for row in rows] == ["B", "H0"]
    assert rows[1] == {"arch": "H0", "MiB": "13.1", "× B": "1.31", "RSS": "9", "× B (2)": "0.9"}
    assert len(section_rows(results, "memory-cpu")) == 4  # every shape's table
    assert section_rows(results, "memory-cpu", "heavy") == [] and section_rows(results, "absent") == []
    assert section_rows(tmp_path / "none.md", "memory-cpu") == []
    assert [table_number(cell) for cell in ("13.1", "4,772", "—", "ok", "-0.5")] == [13.1, 4772.0, None, None, -0.5]


def test_results_plot_marks_each_target_in_baseline_units(tmp_path):
    """Bars are the sections' ratios; targets relative to H0 (H1, R2 at primary; R2_L) are converted to the
    baseline's units; baselines and shapes without a target get none; the figure is written."""
    from plot_results import bars, plot

    results = tmp_path / "RESULTS.md"
    header = "| arch | ms / step (median) | tokens / s | × B | × H0 |\n|---|---|---|---|---|\n"
    rows = "| B | 100 | 1 | 1.000 | 0.9 |\n| H0 | 110 | 1 | 1.100 | 1 |\n| R2 | 140 | 1 | 1.400 | 1.27 |\n"
    for shape in ("primary", "heavy"):
        write_section(results, f"blocks-{shape}-cpu-fp32", "t", f"### shape `{shape}`: {{}}\n\n{header}{rows}")
    v1 = "| arch | ms | tokens / s | × B |\n|---|---|---|---|\n| B | 1 | 1 | 1.0 |\n| v1_pe | 1 | 1 | 1.1 |\n"
    v1 += "| v1_strang | 1 | 1 | 2.9 |\n| v1_doubling | 1 | 1 | 3.0 |\n"
    write_section(results, "blocks-v1-cpu-fp32", "t", f"### shape `v1`: {{}}\n\n{v1}")
    memory = "| arch | allocated peak (MiB) | × B | RSS peak (MiB) | × B |\n|---|---|---|---|---|\n"
    memory += "| B | 100 | 1.00 | 90 | 1.00 |\n| H0 | 133 | 1.33 | 99 | 1.10 |\n"
    write_section(results, "memory-cpu", "m", f"### shape `primary`: {{}}\n\n{memory}")
    primary, label = bars(results, "cpu", "primary", "time")
    assert [(b.arch, b.ratio) for b in primary] == [("B", 1.0), ("H0", 1.1), ("R2", 1.4)]
    assert label == "step time × baseline"
    assert primary[0].target is None and primary[1].target == 1.10
    assert primary[2].target == pytest.approx(1.25 * 1.1)  # R2 ≤ 1.25 × H0, in units of B
    assert bars(results, "cpu", "heavy", "time")[0][2].target is None  # R2's target is set at the primary shape
    v1_targets = {b.arch: b.target for b in bars(results, "cpu", "v1", "time")[0]}
    assert v1_targets == {"B": None, "v1_pe": 1.2, "v1_strang": 2.0, "v1_doubling": 3.5}
    memory_bars, _ = bars(results, "cpu", "primary", "memory")
    assert [(b.arch, b.ratio, b.target) for b in memory_bars] == [("B", 1.0, None), ("H0", 1.33, 1.3)]  # allocated
    assert bars(results, "cpu", "linear", "time") == ([], "step time × baseline")
    # on a GPU the CUDA-graph section is preferred, and the eager one serves where a shape has none
    graphs = "| arch | eager ms / step | compiled ms / step | speed-up | eager × B | compiled × B |\n"
    graphs += "|---|---|---|---|---|---|\n"
    graphs += "| B | 10 | 2.0 | 5 | 1.00 | 1.00 |\n| H0 | 17 | 2.4 | 7 | 1.70 | 1.20 |\n"
    write_section(results, "compile-cuda-reduce-overhead-bf16", "c", f"shape `primary`: {{}}\n\n{graphs}")
    for shape in ("primary", "heavy"):
        write_section(results, f"blocks-{shape}-cuda-bf16", "t", f"### shape `{shape}`: {{}}\n\n{header}{rows}")
    gpu_primary, gpu_label = bars(results, "cuda", "primary", "time")
    assert [(b.arch, b.ratio) for b in gpu_primary] == [("B", 1.0), ("H0", 1.2)] and "CUDA graphs" in gpu_label
    gpu_heavy, gpu_label = bars(results, "cuda", "heavy", "time")
    assert [b.ratio for b in gpu_heavy] == [1.0, 1.1, 1.4] and "eager" in gpu_label
    out = tmp_path / "results-cpu.png"
    assert plot(results, "cpu", out) == 4
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot(tmp_path / "empty.md", "cuda", tmp_path / "none.png") == 0 and not (tmp_path / "none.png").exists()


def test_saved_bytes_by_site_splits_the_saved_storages_by_the_code_that_saved_them():
    """The split sums to saved_storages' total, and the site that calls the ridge proxy's Function holds
    at least what that Function saves, whose size is known: the float64 chunk-start inverses
    (B, H, n, 2, r, r) and updates (B, H, n, 2, c, r) for n chunks of c = 16 positions, and the float32
    X₁ and X₂ (B, H, T, 2, r each; the k and q it keeps are the attention pass's, counted there)."""
    import torch

    from sympformer.benchmarking import saved_bytes_by_site, saved_storages
    from sympformer.nn import SympFormerConfig, SympFormerLM

    torch.manual_seed(0)
    batch, heads, length, width = 2, 2, 24, 16
    model = SympFormerLM(
        SympFormerConfig(vocab_size=64, n_layer=1, n_head=heads, n_embd=width, block_size=length, arch="R2_L")
    )
    idx = torch.randint(0, 64, (batch, length))
    run = lambda: model(idx, idx, return_logits=False)
    sites = saved_bytes_by_site(run)
    assert sum(sites.values()) == sum(saved_storages(run).values())
    r = width // heads
    chunks = -(-length // 16)
    function_saves = batch * heads * 2 * (chunks * (r * r + 16 * r) * 8 + 2 * length * r * 4)
    assert sites["nn/linear_attention.py:PrefixLinearAttention._connection"] >= function_saves  # calls the Function
    assert "(outside sympformer)" not in sites  # every saved tensor is traced to the model's code


def test_linear_connection_modes_change_what_is_kept_not_the_values():
    """benchmarks/linear_connection.py's variants: in float64 every mode gives R2_L the same loss and
    gradients; `recomputed` keeps at least the ridge Function's float64 inverses and updates less than
    `kept` (the region keeps only its inputs), and `recomputed+rebuilt` less again (R2_L's W, V_a and
    increment); and each run leaves the package as it found it."""
    import torch
    from linear_connection import MODES, in_mode

    from sympformer.benchmarking import saved_storages
    from sympformer.nn import SympFormerConfig, SympFormerLM, recompute
    from sympformer.nn.linear_attention import PrefixLinearAttention

    torch.manual_seed(0)
    batch, heads, length, width = 2, 2, 40, 16
    config = SympFormerConfig(vocab_size=64, n_layer=2, n_head=heads, n_embd=width, block_size=length, arch="R2_L")
    model = SympFormerLM(config).double()
    idx = torch.randint(0, 64, (batch, length))
    before = PrefixLinearAttention._connection, recompute.MIN_ELEMENTS

    def loss_and_gradients():
        model.zero_grad(set_to_none=True)
        _, loss = model(idx, idx, return_logits=False)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    results = {mode: in_mode(mode, loss_and_gradients)() for mode in MODES}
    saved = {
        mode: sum(saved_storages(in_mode(mode, lambda: model(idx, idx, return_logits=False))).values())
        for mode in MODES
    }
    assert (PrefixLinearAttention._connection, recompute.MIN_ELEMENTS) == before
    loss, grads = results["kept"]
    for mode in MODES[1:]:
        assert torch.allclose(results[mode][0], loss, rtol=1e-12, atol=0)
        for got, want in zip(results[mode][1], grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    r, chunks = width // heads, -(-length // 16)
    ridge_inverses = config.n_layer * batch * heads * 2 * chunks * (r * r + 16 * r) * 8
    assert saved["kept"] - saved["recomputed"] >= ridge_inverses
    assert saved["recomputed+rebuilt"] < saved["recomputed"]


def test_phase_table_groups_rounds_and_reports_each_ratio():
    """benchmarks/phases.py's table: medians over groups of rounds (a ragged last group too), the ratio
    of the second architecture to the first per group, and the per-round ranges, on known times."""
    from phases import render

    times = [{"B": 100.0, "v1_fe": 130.0}] * 5 + [{"B": 150.0, "v1_fe": 180.0}] * 2
    text = render(times, ["B", "v1_fe"], group=5)
    assert "| 1–5 | 100 | 130 | 1.30 |" in text
    assert "| 6–7 | 150 | 180 | 1.20 |" in text
    assert "B 100–150 ms, v1_fe 130–180 ms, ratio per round 1.20–1.30" in text


def test_operator_count_sees_every_dispatched_operator_and_reads_gpu_sections(tmp_path):
    """The count is below autograd: a forward and backward of x·w + b shows the backward's own products;
    the GPU step times are read back from a section as write_section writes it."""
    import torch
    from ops_per_step import NO_KERNEL, OperatorCount, gpu_times

    x = torch.randn(3, 4)
    w = torch.randn(4, 2, requires_grad=True)
    with OperatorCount() as count:
        (x @ w).exp().sum().backward()
    assert count.counts["mm"] == 2  # forward x·w, backward xᵀ·g (x needs no gradient)
    assert count.counts["exp"] == 1 and count.counts["sum"] == 1
    assert "mm" not in NO_KERNEL and "view" in NO_KERNEL
    results = tmp_path / "RESULTS.md"
    write_section(
        results, "blocks-v1-cuda-bf16", "t", "| arch | ms |\n|---|---|\n| B | 9.0 | 1 |\n| v1_fe | 33.5 | 2 |"
    )
    assert gpu_times(results, "blocks-v1-cuda-bf16") == {"B": 9.0, "v1_fe": 33.5}
    assert gpu_times(results, "blocks-heavy-cuda-bf16") == {}
    # a compile section: its compiled time is the second figure (eager first)
    table = "| arch | eager ms / step | compiled ms / step |\n|---|---|---|\n| B | 10.5 | 2.6 |\n| H0 | 17.2 | 3.3 |"
    write_section(results, "compile-cuda-reduce-overhead-bf16", "t", table)
    assert gpu_times(results, "compile-cuda-reduce-overhead-bf16", column=2) == {"B": 2.6, "H0": 3.3}


def test_shape_step_trains_through_the_compiled_model(monkeypatch):
    """With a compile mode the benchmark step calls what torch.compile returned ("default" is torch's
    None) and its optimiser updates the model's own weights; without one nothing is compiled."""
    import torch
    from blocks_step_time import shape_step

    modes, calls = [], []

    class Compiled(torch.nn.Module):  # stands for torch.compile's wrapper: counts the calls it serves
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args, **kwargs):
            calls.append(1)
            return self.model(*args, **kwargs)

    def record(model, mode=None):
        modes.append(mode)
        record.model = model
        return Compiled(model)

    monkeypatch.setattr(torch, "compile", record)
    step = shape_step("v1", "B", compile_mode="reduce-overhead")
    before = record.model.lm_head.weight.detach().clone()
    step()
    assert calls == [1] and not torch.equal(record.model.lm_head.weight, before)
    shape_step("v1", "B", compile_mode="default")
    shape_step("v1", "B")
    assert modes == ["reduce-overhead", None]


@pytest.mark.slow
def test_compiled_kernel_counts_are_per_step_and_survive_inductors_cache():
    """compiled_kernels.py counts what inductor generates for one step: none before compiling would read
    0, a count carried over from the last model would grow, and a second compile of the same step (served
    from inductor's cache) must count the same. H0's momentum algebra adds kernels to B's."""
    from compiled_kernels import generated_kernels

    b = generated_kernels("heavy", "B")
    h0 = generated_kernels("heavy", "H0")
    assert 0 < b < h0
    assert generated_kernels("heavy", "B") == b


def test_gpu_profile_sums_device_records_but_not_annotations():
    """Kernels, copies and fills count once each; CPU records and the optimizer's GPU-timeline annotation
    (which spans kernels counted on their own) do not."""
    from types import SimpleNamespace

    from gpu_profile import by_kind, kernel_seconds
    from torch.autograd import DeviceType

    def record(name, start_us, end_us, device=DeviceType.CUDA, annotation=False):
        span = SimpleNamespace(start=start_us, end=end_us)
        return SimpleNamespace(name=name, device_type=device, time_range=span, is_user_annotation=annotation)

    events = [
        record("Optimizer.step#AdamW.step", 0, 500, annotation=True),
        record("multi_tensor_apply_kernel", 10, 210),
        record("multi_tensor_apply_kernel", 250, 400),
        record("Memcpy HtoD", 400, 450),
        record("aten::mm", 0, 900, device=DeviceType.CPU),
    ]
    seconds, launches = kernel_seconds(events)
    assert launches == {"multi_tensor_apply_kernel": 2, "Memcpy HtoD": 1}
    assert seconds == pytest.approx({"multi_tensor_apply_kernel": 350e-6, "Memcpy HtoD": 50e-6})
    kinds = by_kind(seconds, launches)
    assert sorted(kinds) == ["copies and fills", "optimizer"]
    assert kinds["optimizer"] == pytest.approx((2, 350e-6)) and kinds["copies and fills"] == pytest.approx((1, 50e-6))


def test_gpu_profile_report_sets_each_case_against_its_shapes_first(tmp_path):
    """The report's ratios are against the first case of the same shape, its kinds cover every case (a
    kind a case lacks reads 0), and write_section keeps the tables readable by section_rows."""
    from gpu_profile import DeviceWork, report

    work = {
        "primary:B": DeviceWork(2e-3, 200, [("k", 1e-3)], {"generated": (150, 1e-3), "matrix products": (50, 1e-3)}),
        "primary:H0": DeviceWork(3e-3, 350, [("k", 1e-3)], {"generated": (300, 2e-3), "matrix products": (50, 1e-3)}),
        "v1:B": DeviceWork(1e-3, 100, [("k", 5e-4)], {"attention": (8, 1e-3)}),
    }
    wall = {"primary:B": 4e-3, "primary:H0": 5e-3, "v1:B": 2e-3}
    body = report(list(work), wall, work, "bf16, compiled (reduce-overhead)")
    write_section(tmp_path / "R.md", "gpu-profile", "t", body)
    rows = section_rows(tmp_path / "R.md", "gpu-profile")
    ratios = {row["case"]: (row["wall × ref"], row["kernels × ref"]) for row in rows if "wall × ref" in row}
    assert ratios == {"primary:B": ("1.00", "1.00"), "primary:H0": ("1.25", "1.50"), "v1:B": ("1.00", "1.00")}
    kinds = {row["case"]: row for row in rows if "generated" in row}
    assert kinds["primary:H0"]["generated"] == "300 / 2.000" and kinds["v1:B"]["generated"] == "0 / 0.000"
    assert kinds["v1:B"]["attention"] == "8 / 1.000" and set(kinds) == set(work)


def test_gpu_kernels_are_sorted_by_what_made_them():
    """Kernel names as the H200 profiles recorded them (and inductor's): a Triton kernel named after the
    attention whose inputs it prepares is still generated code; attention libraries' GEMM tiles are
    attention."""
    from gpu_profile import kernel_kind

    kinds = {
        "triton_poi_fused__scaled_dot_product_flash_attention_0": "generated",
        "triton_per_fused_native_layer_norm_1": "generated",
        "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64": "attention",
        "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<1": "attention",
        "fmha_cutlassB_f32_aligned_64x64_k64_sm80": "attention",
        "sm80_xmma_gemm_f32f32_f32f32_f32_nt_n_tilesize64x64x8_stage3": "matrix products",
        "nvjet_sm90_tst_32x64_64x16_4x2_h_bz_NTN": "matrix products",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous n": "optimizer",
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::": "copies and fills",
        "Memset (Device)": "copies and fills",
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, at::na": "other ATen",
        "void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernelTemplate<float, float,": "other ATen",
    }
    assert {name: kernel_kind(name) for name in kinds} == kinds


def test_gpu_script_parses_and_names_existing_scripts():
    """benchmarks/gpu.sh runs where no test can (a lent GPU): at least its shell parses, and every
    benchmark script and config it names exists."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    named = set(re.findall(r"(benchmarks/\w+\.py|configs/[\w-]+\.yaml)", script.read_text()))
    assert {"benchmarks/gpu_check.py", "benchmarks/memory.py", "configs/cpu-mini.yaml"} <= named
    assert all((root / path).is_file() for path in named), sorted(p for p in named if not (root / p).is_file())
    # a dry run lists every step once, in order, with no shell error (the second H200 run lost its first
    # training step to an `export -f` placed before the function it exports)
    env = {**os.environ, "DRY": "1", "ALL": "1"}
    env.pop("ONLY", None)
    dry = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=root)
    assert dry.returncode == 0 and dry.stderr == "", dry.stderr
    steps = [line.split(" (")[0] for line in dry.stdout.splitlines() if " s): " in line]
    assert len(steps) == len(set(steps)) and {"correctness", "train", "compile", "compile-fp32"} <= set(steps), steps
    only = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={**env, "ONLY": "train"}, cwd=root)
    assert [line.split(" (")[0] for line in only.stdout.splitlines() if " s): " in line] == ["train"]


def test_gpu_script_arguments_parse(monkeypatch):
    """Every benchmark command of benchmarks/gpu.sh (all steps) gets past its script's argument parser as
    it would on a CUDA machine: a refused option costs a lent GPU's minutes and shows only there."""
    import argparse
    import importlib
    import shlex
    import subprocess

    import options

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DRY": "1", "ALL": "1", "PY": sys.executable}
    env.pop("ONLY", None)
    dry = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu.sh")], capture_output=True, text=True, env=env, cwd=root
    )
    commands = [shlex.split(line.split(" s): ", 1)[1]) for line in dry.stdout.splitlines() if " s): " in line]
    commands = [command for command in commands if command[1].endswith(".py")]  # not the training runs
    assert len(commands) >= 10, dry.stdout

    class Parsed(Exception):
        pass

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *args, **kwargs):
        raise Parsed(parse(self, *args, **kwargs))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(options.torch.cuda, "is_available", lambda: True)  # as on the GPU machine
    for command in commands:
        script = Path(command[1]).stem
        monkeypatch.setattr(sys, "argv", command[1:])
        with pytest.raises(Parsed) as parsed:
            importlib.import_module(script).main()
        assert str(parsed.value.args[0].device).startswith("cuda"), command


# (script and its cheapest arguments, the section it writes): each run once into a scratch RESULTS.md.
# kernels.py and momentum_algebra.py swap package internals in and out to compare variants (a change of
# their signatures broke kernels.py once without any test noticing: rows_per_chunk's budget), so they run
# in the default suite (~6 s each); the others, whose code `make bench` also needs, among the slow tests.
SCRIPT_RUNS = [
    pytest.param(["kernels.py", "--repeats", "1"], "kernels-cpu", id="kernels"),
    pytest.param(["momentum_algebra.py", "--shapes", "v1", "--rounds", "1"], "momentum-algebra-cpu", id="algebra"),
    *(
        pytest.param(args, key, id=args[0].removesuffix(".py"), marks=pytest.mark.slow)
        for args, key in [
            (["blocks_step_time.py", "--shapes", "v1", "--rounds", "1", "--repeats", "1"], "blocks-v1-cpu-fp32"),
            (["ops_per_step.py", "--shapes", "v1"], "ops-per-step"),
            (["ops_per_step.py", "--shapes", "v1", "--device-paths"], "ops-per-step-device-paths"),
            (["phases.py", "--rounds", "2"], "phases-v1-cpu"),
            (["particles_scale.py", "--sizes", "1000"], "particles-scale-cpu"),
            (["allocator.py", "--pairs", "1", "--shapes", "v1"], "allocator-cpu"),
            (["linear_connection.py", "--rounds", "1"], "linear-connection-cpu"),
            (["compile.py", "--rounds", "1", "--shape", "v1", "--archs", "B,v1_fe"], "compile-cpu-v1"),
        ]
    ),
]


@pytest.mark.parametrize("args, key", SCRIPT_RUNS)
def test_benchmark_script_runs_to_its_section(tmp_path, args, key):
    import subprocess

    root = Path(__file__).resolve().parents[1]
    results = tmp_path / "RESULTS.md"
    command = [sys.executable, str(root / "benchmarks" / args[0]), *args[1:], "--results", str(results)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=root)
    assert run.returncode == 0, run.stderr[-2000:]
    assert section_rows(results, key), f"no table in section {key}"


def test_list_options_parse_and_name_the_valid_values():
    import argparse

    import options

    shapes = options.name_list(["primary", "heavy"], "shapes")
    assert shapes(" heavy, primary ") == ["heavy", "primary"]
    for bad, said in [("primary,nope", "unknown shapes nope; valid: primary, heavy"), (",", "no shapes given")]:
        with pytest.raises(argparse.ArgumentTypeError, match=said):
            shapes(bad)
    cases = options.case_list(["heavy", "linear"])
    assert cases("heavy:B,linear:R2_L") == ["heavy:B", "linear:R2_L"]
    for bad, said in [("heavyB", "is not shape:arch"), ("v1:B", "unknown shapes v1"), ("heavy:Q", "architectures Q")]:
        with pytest.raises(argparse.ArgumentTypeError, match=said):
            cases(bad)
    assert options.positive_ints("1000,10") == [1000, 10]
    for bad in ("0", "x", "3,-1", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            options.positive_ints(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="valid: cpu, cuda"):
        options.device_name("tpu")


# every script's list and number options, each given one bad value: argparse's usage error (exit status 2)
# naming what is wrong, before anything is built or measured
BAD_ARGUMENTS = [
    ("allocator", ["--shapes", "nope"], "unknown shapes nope"),
    ("blocks_step_time", ["--shapes", "primary,nope"], "unknown shapes nope"),
    ("compile", ["--archs", "B,Q"], "unknown architectures Q"),
    ("compiled_kernels", ["--cases", "heavy:Q"], "unknown architectures Q"),
    ("gpu_check", ["--archs", "Q"], "unknown architectures Q"),
    ("gpu_profile", ["--device", "cpu"], "profile_steps.py"),
    ("kernels", ["--repeats", "0"], "0 is not at least 1"),
    ("linear_connection", ["--rounds", "0"], "0 is not at least 1"),
    ("memory", ["--device", "tpu"], "unknown device 'tpu'"),
    ("momentum_algebra", ["--rounds", "x"], "'x' is not a whole number"),
    ("ops_per_step", ["--shapes", ""], "no shapes given"),
    ("particles_scale", ["--sizes", "1000,0"], "0 is not at least 1"),
    ("phases", ["--archs", "B,nope"], "unknown architectures nope"),
    ("profile_steps", ["--cases", "heavyB"], "is not shape:arch"),
    ("run_all", ["--device", "tpu"], "unknown device 'tpu'"),
    ("vs_transformers", ["--shapes", "v1"], "unknown shapes v1; valid: primary, heavy"),
]


@pytest.mark.parametrize("script, arguments, said", BAD_ARGUMENTS, ids=[case[0] for case in BAD_ARGUMENTS])
def test_benchmark_scripts_refuse_bad_options_before_running(script, arguments, said, monkeypatch, capsys, tmp_path):
    import importlib

    module = importlib.import_module(script)
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *arguments, "--results", str(results)])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    assert said in capsys.readouterr().err
    assert not results.exists()


def test_every_benchmark_script_is_checked_for_bad_options():
    scripts = {path.stem for path in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")}
    assert scripts - {"options", "plot_results"} == {case[0] for case in BAD_ARGUMENTS}  # plot: argparse choices
