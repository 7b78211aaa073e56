"""What the momentum blocks' algebra costs and keeps, three ways, per shape, interleaved in one process
with B:

- `fused` (the default): every LayerNorm of a weighted sum is `layer_norm_of_sum` (the sum rebuilt
  in the backward pass by a custom autograd Function), R2's momentum W = β₁ v + g₁ F is `weighted_sum`
  (F rebuilt), and when activations reach `sympformer.nn.recompute.MIN_ELEMENTS` the H1/R2 connection
  algebra is checkpointed and R2's V_a and increment reach LN_M and LN_v as streams normalised again
  from W and C (`rebuilt_layer_norm_of_sum`);
- `checkpoint`: the same LayerNorm sums recomputed by `torch.utils.checkpoint` regions instead (the
  design before the fused function; the attention and MLP outputs kept), W a plain sum, R2's V_a and
  increment kept, under the same threshold;
- `plain`: the blocks' algebra as an ordinary autograd graph, nothing rebuilt or recomputed.

The attention's own choices (the connection's value groups formed again in the kernel's backward pass)
are the same in every mode.

For each: the training-step time and the bytes autograd keeps for the backward pass.

    python benchmarks/momentum_algebra.py [--shapes primary,heavy,v1] [--rounds 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import options  # noqa: E402
from blocks_step_time import SHAPES, shape_batch, train_step_fn  # noqa: E402

import sympformer.nn.attention as attention_module  # noqa: E402
import sympformer.nn.blocks as blocks_module  # noqa: E402
import sympformer.nn.v1_blocks as v1_blocks_module  # noqa: E402
from sympformer.allocator import apply_allocator_choice  # noqa: E402
from sympformer.benchmarking import interleaved_times, median, saved_storages, training_optimizer, write_section  # noqa: E402
from sympformer.nn import SympFormerConfig, SympFormerLM  # noqa: E402
from sympformer.nn.norm_sum import (  # noqa: E402
    layer_norm_of_sum,
    plain_layer_norm_of_sum,
    plain_weighted_sum,
    rebuilt_layer_norm_of_sum,
    stream_value,
    weighted_sum,
)
from sympformer.nn.recompute import recomputed  # noqa: E402
from sympformer.utils import markdown_table  # noqa: E402

ARCHS = {"primary": ("Y", "H0", "R2"), "heavy": ("Y", "H0", "R2"), "v1": ("v1_fe", "v1_pe")}
MODES = ("fused", "checkpoint", "plain")


def checkpointed_layer_norm_of_sum(norm, *terms):
    coefficients, streams = [c for c, _ in terms], [stream_value(t) for _, t in terms]
    return recomputed(lambda *ts: norm(sum(c * t for c, t in zip(coefficients, ts, strict=True))), *streams)


def in_mode(mode: str, fn):
    """fn() with the blocks' LayerNorm sums (and, for `plain`, the connection algebra) done as ``mode``."""
    norm_sum = {"fused": layer_norm_of_sum, "checkpoint": checkpointed_layer_norm_of_sum}.get(mode)
    connection = recomputed if mode != "plain" else (lambda fn, *inputs: fn(*inputs))

    def run():
        for module in (blocks_module, v1_blocks_module):
            module.layer_norm_of_sum = norm_sum or plain_layer_norm_of_sum
        blocks_module.weighted_sum = weighted_sum if mode == "fused" else plain_weighted_sum
        blocks_module.rebuilt_layer_norm_of_sum = (
            rebuilt_layer_norm_of_sum if mode == "fused" else blocks_module.layer_norm_of_sum
        )
        attention_module.recomputed = connection
        try:
            return fn()
        finally:
            for module in (blocks_module, v1_blocks_module):
                module.layer_norm_of_sum = layer_norm_of_sum
            blocks_module.weighted_sum = weighted_sum
            blocks_module.rebuilt_layer_norm_of_sum = rebuilt_layer_norm_of_sum
            attention_module.recomputed = recomputed

    return run


def run(shape: str, rounds: int) -> str:
    fields, batch, _, _ = SHAPES[shape]
    idx = shape_batch(shape)
    contenders, saved = {}, {}
    for arch in ("B", *ARCHS[shape]):
        for mode in MODES if arch != "B" else ("—",):
            model = SympFormerLM(SympFormerConfig(**fields, arch=arch))
            step = train_step_fn(model, idx, training_optimizer(model), "fp32")
            contenders[(arch, mode)] = in_mode(mode, step)
            forward = in_mode(mode, lambda model=model: model(idx, idx, return_logits=False))
            saved[(arch, mode)] = sum(saved_storages(forward).values()) / 2**20
    times = interleaved_times(contenders, rounds=rounds, repeats=2)
    base = median(times[("B", "—")])
    rows = [
        [arch, mode, f"{median(t) * 1e3:.1f}", f"{median(t) / base:.3f}", f"{saved[(arch, mode)]:,.1f}"]
        for (arch, mode), t in times.items()
    ]
    header = ["arch", "algebra", "ms / step (median)", "× B", "saved activations (MiB)"]
    return f"### shape `{shape}`: {fields}, batch {batch}\n\n" + markdown_table(header, rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_shapes(parser, SHAPES, "primary,heavy,v1")
    options.add_rounds(parser, 7)
    options.add_results(parser)
    args = parser.parse_args()
    apply_allocator_choice()  # as the sympformer command does (SYMPFORMER_CPU_ALLOCATOR)
    body = "\n".join(run(shape, args.rounds) for shape in args.shapes)
    print(body)
    title = "The momentum blocks' algebra: fused, checkpointed, plain (cpu, fp32)"
    write_section(args.results, "momentum-algebra-cpu", title, body)


if __name__ == "__main__":
    main()
