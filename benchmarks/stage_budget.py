"""The main job's budget: where its time goes, and how close its training loops come to this
machine's own matrix-multiply throughput.

    python benchmarks/stage_budget.py [--root .] [--seconds 0.5]

Reads the newest `retrain` flow run of the project at --root (its MLflow parent run holds
`seconds.<stage>` and `cpu_seconds.<stage>`: wall and CPU seconds of each stage's whole
process tree) and prints, per stage, wall seconds, CPU-seconds and CPU/wall (2.0 = both cores
of a 2-core box busy throughout).

For each training loop it prints the loop's achieved FLOP/s (from its metrics: tokens/s x
training FLOPs per token, 6N + attention) as a fraction of the matrix-multiply throughput this
machine reaches, measured in this run on the loop's own matmul shapes and dtype (bf16 when
the loop trained with CPU bf16 autocast). Beside it, the same fraction for a nanoGPT decoder
(benchmarks/nanogpt_reference.py) of the same shapes, timed in this run: the ratio a lean
reference reaches on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from nanogpt_reference import NanoGPT
from train_throughput import make_step, timed_steps

from cadenza.config import load_settings
from cadenza.models.generator import GeneratorConfig, flops_per_token
from cadenza.tokens.tokenizer import load_tokenizer
from cadenza.tracking.runs import client, experiment_id


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def native_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def matmul_flops(shapes: list[tuple[int, int, int, int]], dtype, seconds: float) -> float:
    """FLOP/s of this machine on `shapes` ((count, M, K, N): count matmuls of M x K by K x N per
    forward pass), timed in the mix the model runs them: forward shapes and the two backward
    products (dX = dY W^T, dW = X^T dY) of each."""
    work = []
    for count, m, k, n in shapes:
        x, w, dy = (torch.randn(a, b).to(dtype) for a, b in ((m, k), (k, n), (m, n)))
        work.append((count, lambda x=x, w=w, dy=dy: (x @ w, dy @ w.T, x.T @ dy)))
    flops = sum(3 * 2 * count * m * k * n for count, m, k, n in shapes)
    for _, run in work:  # warm-up
        run()
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for count, run in work:
            for _ in range(count):
                run()
        runs += 1
    return flops * runs / (time.perf_counter() - started)


def generator_shapes(config: GeneratorConfig, batch: int, vocab: int):
    tokens, d, ff = batch * config.seg_len, config.d_model, config.d_ff
    layers = config.n_layers
    return [(layers, tokens, d, 3 * d), (layers, tokens, d, d), (layers, tokens, d, ff),
            (layers, tokens, ff, d), (1, tokens, d, vocab)]  # fmt: skip


def nanogpt_flops(config: GeneratorConfig, batch: int, vocab: int, bf16: bool, steps: int):
    """(nanoGPT's training FLOP/s on the same width, depth, batch and segment (no memory), in
    bare AdamW steps on random tokens; its FLOPs per token)."""
    torch.manual_seed(0)
    model = NanoGPT(vocab, config.d_model, config.n_layers, config.n_heads, config.d_ff)
    step = make_step(model, torch.device("cpu"), compile_model=False, cpu_bf16=bf16)
    tokens = torch.randint(2, vocab, (batch, config.seg_len + 1))
    timed_steps(step, tokens, 2, torch.device("cpu"))
    seconds = timed_steps(step, tokens, steps, torch.device("cpu"))
    # N without the learned position table (a lookup, no FLOPs; nanoGPT's own accounting)
    num_params = sum(p.numel() for p in model.parameters()) - model.position.weight.numel()
    # nanoGPT attends within the segment: 6N + 12 L d T (PaLM accounting)
    per_token = 6 * num_params + 12 * config.n_layers * config.d_model * config.seg_len
    return batch * config.seg_len * steps / seconds * per_token, per_token


def stage_table(root: Path) -> list[tuple[str, float, float]]:
    mlflow_client = client(root)
    runs = mlflow_client.search_runs(
        [experiment_id(mlflow_client, root)], "tags.`cadenza.stage` = 'retrain'",
        order_by=["start_time DESC"], max_results=1,
    )  # fmt: skip
    if not runs:
        raise SystemExit(f"{root}: no retrain flow run in its MLflow store; run `make run` first")
    metrics = runs[0].data.metrics
    stages = [key.removeprefix("seconds.") for key in metrics if key.startswith("seconds.")]
    return [(s, metrics[f"seconds.{s}"], metrics.get(f"cpu_seconds.{s}", float("nan")))
            for s in stages]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--seconds", type=float, default=1.0, help="matmul timing per shape set")
    parser.add_argument("--steps", type=int, default=6, help="timed nanoGPT steps")
    args = parser.parse_args()
    root = args.root.resolve()
    settings = load_settings(root / "params.yaml")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, native bf16 {native_bf16()}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip

    rows = stage_table(root)
    print(f"\n{'stage':<24}{'wall s':>9}{'CPU s':>9}{'CPU/wall':>10}")
    for stage, wall, cpu in rows:
        print(f"{stage:<24}{wall:9.1f}{cpu:9.1f}{cpu / wall if wall else 0:10.2f}")
    total_wall, total_cpu = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'all stages':<24}{total_wall:9.1f}{total_cpu:9.1f}{total_cpu / total_wall:10.2f}")

    pretrain = json.loads((root / "metrics" / "pretrain.json").read_text())
    vocab = len(load_tokenizer(root / "data" / "tokens" / "tokenizer.json"))
    preset = settings.pretrain.selected
    config = GeneratorConfig(vocab_size=vocab, **{
        name: getattr(preset, name)
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "seg_len", "mem_len")
    })  # fmt: skip
    bf16 = bool(pretrain.get("cpu_bf16"))
    dtype = torch.bfloat16 if bf16 else torch.float32
    batch = preset.batch_size
    achieved = pretrain["tokens_per_second"] * flops_per_token(config, pretrain["num_parameters"])
    peak = matmul_flops(generator_shapes(config, batch, vocab), dtype, args.seconds)
    reference, reference_per_token = nanogpt_flops(config, batch, vocab, bf16, args.steps)
    print(f"\npretrain ({'bf16' if bf16 else 'fp32'}, batch {batch} x {config.seg_len}, "
          f"d {config.d_model}, {config.n_layers} layers):")  # fmt: skip
    print(f"  matmul on its shapes      {peak / 1e9:8.1f} GFLOP/s (this run)")
    print(f"  pretraining achieved      {achieved / 1e9:8.1f} GFLOP/s = {achieved / peak:.2f} "
          f"of matmul ({pretrain['tokens_per_second']:,.0f} tokens/s)")  # fmt: skip
    print(f"  nanoGPT, same shapes      {reference / 1e9:8.1f} GFLOP/s = {reference / peak:.2f} "
          f"of matmul ({reference / reference_per_token:,.0f} tokens/s in bare steps); "
          f"pretraining / nanoGPT {achieved / reference:.2f}")  # fmt: skip

    disc = json.loads((root / "metrics" / "pretrain_discriminator.json").read_text())
    masked = settings.pretrain_discriminator
    tokens = disc["steps"] * masked.batch_size * masked.seq_len
    per_token = 6 * disc["num_parameters"] + 12 * masked.n_layers * masked.d_model * masked.seq_len
    achieved = tokens / disc["seconds"] * per_token
    rows_, d, ff, layers = (masked.batch_size * masked.seq_len, masked.d_model, masked.d_ff,
                            masked.n_layers)  # fmt: skip
    shapes = [(layers, rows_, d, 3 * d), (layers, rows_, d, d), (layers, rows_, d, ff),
              (layers, rows_, ff, d), (1, rows_, d, vocab)]  # fmt: skip
    peak = matmul_flops(shapes, torch.float32, args.seconds)  # the encoder trains in fp32
    print(f"\npretrain_discriminator (fp32, batch {masked.batch_size} x {masked.seq_len}, "
          f"d {masked.d_model}, {masked.n_layers} layers):")  # fmt: skip
    print(f"  matmul on its shapes      {peak / 1e9:8.1f} GFLOP/s (this run)")
    print(f"  training achieved         {achieved / 1e9:8.1f} GFLOP/s = {achieved / peak:.2f} "
          f"of matmul ({tokens / disc['seconds']:,.0f} tokens/s)")  # fmt: skip


if __name__ == "__main__":
    main()
