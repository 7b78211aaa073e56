"""The training loop: `train(config, out)` trains one model and fills its run folder.

Run folder: config.json (resolved), metrics.csv, dynamics.csv, summary.json, samples.txt, loss.png,
model/ (safetensors + config.json of the final weights) and the checkpoints latest.pt / final.pt
(model, optimiser, step, iterator and RNG states; written atomically). ``resume=True`` continues
from latest.pt exactly: on CPU the final weights are bitwise those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from sympformer.data import BlockIterator, TokenShards, validation_batches
from sympformer.data.shards import prepare
from sympformer.nn import SympFormerLM
from sympformer.nn.layers import ConstrainedScalar
from sympformer.train import distributed as D
from sympformer.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from sympformer.train.config import RunConfig, compile_model, tokens_per_update, total_steps, warmup_steps
from sympformer.train.metrics import DYNAMICS_COLUMNS, METRICS_COLUMNS, CSVLog, plot_losses
from sympformer.train.optim import build_optimizer, learning_rate, set_learning_rate
from sympformer.utils import atomic_write_text, seed_everything


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN/Inf; the last good checkpoint is kept."""


class RunFolderError(RuntimeError):
    pass


def ensure_data(config: RunConfig, info: D.DistInfo, progress: bool) -> TokenShards:
    """Open the shards, preparing them first (main process) when the folder is empty and a corpus is set."""
    data = config.data
    manifest = Path(data.dir) / "manifest.json"
    if not manifest.exists() and data.corpus and info.is_main:
        print(f"preparing {data.corpus} with tokenizer {data.tokenizer} in {data.dir} ...")
        prepare(data.corpus, data.tokenizer, data.dir, progress=progress)
    D.barrier(info)
    return TokenShards.open(data.dir, verify_hash=data.verify_hash, model_vocab_size=config.model.vocab_size)


def scalar_dynamics(model: SympFormerLM) -> list[tuple[int, str, float]]:
    """(layer, name, value) of every learned scalar of every block (β, γ, μ, η, h, …)."""
    rows = []
    for layer, block in enumerate(model.blocks):
        for name, module in block.named_modules():
            if isinstance(module, ConstrainedScalar):
                rows.append((layer, name, float(module().detach())))
    return rows


@torch.no_grad()
def evaluate(model: SympFormerLM, batches, device, precision: str, info: D.DistInfo) -> float:
    """Mean cross-entropy over the fixed validation batches (split across processes)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in batches[info.rank :: info.world_size]:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            _, loss = model(x, y, return_logits=False)
        totals += torch.tensor([loss.double().item() * y.numel(), y.numel()], dtype=torch.float64, device=device)
    D.all_reduce_sum(totals, info)
    model.train(was_training)
    return (totals[0] / totals[1]).item()


def _sample_text(model: SympFormerLM, shards: TokenShards, config: RunConfig, device) -> str:
    t = config.train
    tokenizer = shards.tokenizer()
    if t.sample_prompt:
        prompt_ids = tokenizer.encode(t.sample_prompt)
    else:
        prompt_ids = shards.val[:16].tolist()
    prompt = torch.tensor([prompt_ids[-config.model.block_size :]], device=device)
    out = model.generate(
        prompt,
        t.sample_tokens,
        temperature=t.sample_temperature,
        top_k=t.sample_top_k,
        generator=torch.Generator(device=device).manual_seed(t.seed),
        vocab_limit=shards.vocab_size,
    )
    return tokenizer.decode(out[0].tolist())


def _kill_hook(step: int) -> None:
    """Test hook: SYMPFORMER_KILL_AFTER_STEP=k makes the process SIGKILL itself after step k."""
    target = os.environ.get("SYMPFORMER_KILL_AFTER_STEP")
    if target is not None and int(target) == step:
        os.kill(os.getpid(), signal.SIGKILL)


class NonCausalArchitecture(RuntimeError):
    pass


def train(
    config: RunConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    allow_noncausal: bool = False,
) -> dict:
    """Train ``config`` into the run folder ``out``; returns the summary (also in summary.json).
    A non-causal research architecture (v1_global_euler) is refused unless ``allow_noncausal``."""
    from tqdm import tqdm

    if not config.model.is_causal and not allow_noncausal:
        raise NonCausalArchitecture(
            f"{config.model.arch} is not causal: its force differentiates a whole-sequence energy, so later "
            "tokens move earlier ones and the loss it reaches is a leak, not a result (notes §7). It is a "
            "research witness; pass --allow-noncausal to train it anyway."
        )
    out = Path(out)
    t = config.train
    info = D.init_distributed(t.device)
    device = D.resolve_device(t.device, info)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    latest = out / "latest.pt"
    if info.is_main:
        if not resume and (latest.exists() or (out / "final.pt").exists()):
            raise RunFolderError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        if resume and not latest.exists():
            raise RunFolderError(f"--resume: {latest} does not exist")
        out.mkdir(parents=True, exist_ok=True)
    D.barrier(info)

    seed_everything(t.seed + info.rank)
    shards = ensure_data(config, info, progress)
    model = SympFormerLM(config.model, seed=t.seed).to(device)
    optimizer = build_optimizer(model, t.lr, t.weight_decay, t.scalar_lr_mult, t.betas)
    train_iter = BlockIterator(shards.train, config.model.block_size, t.batch_size, t.seed, info.rank, info.world_size)
    val_batches = validation_batches(shards.val, config.model.block_size, t.batch_size, t.eval_batches)
    steps = total_steps(config, info.world_size)
    warmup = warmup_steps(config, steps)
    per_update = tokens_per_update(config, info.world_size)
    checkpoint_every = t.checkpoint_interval or t.eval_interval

    step, tokens, wall = 0, 0, 0.0
    if resume:
        # read onto the CPU: load_state_dict copies weights and optimizer state to the model's device,
        # and the generator states must stay CPU tensors
        state = load_checkpoint(latest)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        train_iter.load_state_dict(state["iterator"])
        restore_rng(state["rng"][info.rank] if isinstance(state["rng"], list) else state["rng"])
        step, tokens, wall = state["step"], state["tokens"], state["wall_s"]
    metrics = CSVLog(out / "metrics.csv", METRICS_COLUMNS)
    dynamics = CSVLog(out / "dynamics.csv", DYNAMICS_COLUMNS)
    if info.is_main:
        metrics.start(step if resume else None)
        dynamics.start(step if resume else None)
        atomic_write_text(out / "config.json", config.to_json() + "\n")

    runner = model
    if t.compile:
        # a fresh dynamo state per run: `compare` trains several models in one process, and nothing from
        # an earlier model's compilation applies to this one
        torch._dynamo.reset()
        runner = compile_model(runner, t.compile_mode)
    if info.enabled:
        runner = DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(path: Path) -> None:
        rng = capture_rng()
        gathered = [None] * info.world_size if info.enabled else [rng]
        if info.enabled:
            torch.distributed.all_gather_object(gathered, rng)
        if info.is_main:
            save_checkpoint(
                path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "tokens": tokens,
                    "wall_s": wall,
                    "iterator": train_iter.state_dict(),
                    "rng": gathered if info.enabled else rng,
                    "config": config.to_dict(),
                },
            )

    def log_eval() -> float:
        val = evaluate(model, val_batches, device, t.precision, info)
        if info.is_main:
            for layer, name, value in scalar_dynamics(model):
                dynamics.append({"step": step, "layer": layer, "name": name, "value": value})
        return val

    bar = tqdm(
        total=steps,
        initial=step,
        desc=f"train {config.model.arch}",
        unit="step",
        disable=None if (progress and info.is_main) else True,  # None: no bar when not a terminal
        dynamic_ncols=True,
    )
    step_times: list[float] = []
    last_val = None
    if step == 0 and info.is_main:
        last_val = log_eval()
        metrics.append({"step": 0, "tokens": 0, "val_loss": last_val, "lr": 0.0, "wall_s": 0.0})
    elif step == 0:
        log_eval()
    model.train()
    while step < steps:
        started = time.perf_counter()
        lr = learning_rate(step, t.lr, steps, warmup, t.min_lr_ratio)
        set_learning_rate(optimizer, lr)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for micro in range(t.grad_accum):
            x, y = next(train_iter)
            x, y = x.to(device), y.to(device)
            sync = contextlib.nullcontext()
            if info.enabled and micro < t.grad_accum - 1:
                sync = runner.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16"):
                    _, loss = runner(x, y, return_logits=False)
                (loss / t.grad_accum).backward()
            loss_sum += loss.detach().double()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
        bad = torch.tensor([float(not (torch.isfinite(loss_sum) and torch.isfinite(grad_norm)))], device=device)
        D.all_reduce_sum(bad, info)
        if bad.item() > 0:
            bar.close()
            kept = f"the last good checkpoint is {latest}" if latest.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"{config.model.arch}: the loss or gradient became non-finite at step {step + 1} "
                f"(loss {loss_sum.item() / t.grad_accum:.4g}, grad norm {grad_norm.item():.4g}); {kept}. "
                "Lower train.lr or raise the warmup."
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += per_update
        elapsed = time.perf_counter() - started
        wall += elapsed
        step_times.append(elapsed)
        train_loss = loss_sum.item() / t.grad_accum
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{per_update / elapsed:,.0f}")
        is_eval = step % t.eval_interval == 0 or step == steps
        if is_eval:
            last_val = log_eval()
        if info.is_main and (step % t.log_interval == 0 or is_eval):
            metrics.append(
                {
                    "step": step,
                    "tokens": tokens,
                    "train_loss": train_loss,
                    "val_loss": last_val if is_eval else None,
                    "lr": lr,
                    "step_time_s": elapsed,
                    "tokens_per_s": per_update / elapsed,
                    "wall_s": wall,
                }
            )
        if step % checkpoint_every == 0 or step == steps:
            checkpoint(latest)
        _kill_hook(step)
    bar.close()

    summary = {}
    checkpoint(out / "final.pt")  # collective: every rank contributes its RNG state
    if info.is_main:
        model.save_pretrained(out / "model")
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, config.model.block_size, dtype=torch.long, device=device))
        summary = {
            "arch": config.model.arch,
            "seed": t.seed,
            "final_val_loss": last_val,
            "parameters": model.num_parameters(),
            "steps": step,
            "tokens": tokens,
            "wall_time_s": wall,
            "step_time_s_median": statistics.median(step_times) if step_times else None,
            "tokens_per_s": per_update / statistics.median(step_times) if step_times else None,
            "attention_calls_per_token": model.attention_calls(),
            "kernel_calls_per_forward": model.kernel_calls(),
            "world_size": info.world_size,
            "device": str(device),
            "data": shards.manifest["source"]["corpus"],
            "tokenizer": shards.manifest["tokenizer"]["spec"],
        }
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        if t.sample_tokens > 0:
            atomic_write_text(out / "samples.txt", _sample_text(model, shards, config, device) + "\n")
        plot_losses(out / "metrics.csv", out / "loss.png", f"{config.model.arch} (seed {t.seed})")
    D.barrier(info)
    return summary
