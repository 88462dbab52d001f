"""OpenMP thread settings on CPU: training steps and batch-1 generation of the cpu-preset
generator under three settings, each in a fresh process (the OpenMP runtime reads its
environment once, when torch loads it):

- `1 thread`: OMP_NUM_THREADS=1;
- `active`: every core, OMP_WAIT_POLICY=ACTIVE (idle threads spin between parallel regions;
  what libgomp does by default);
- `passive`: every core, OMP_WAIT_POLICY=PASSIVE (idle threads sleep; what `cadenza` sets
  unless the variable is already set).

    python benchmarks/thread_policy.py [--rounds 3] [--steps 4] [--tokens 256]

Rounds alternate the settings so other work on a shared box slows them alike; the script
prints the median of each (min-max over rounds) and the median per-round ratio against
`active`, the default it replaced. Run it on an idle box and on a busy one: the gap is a
property of the load, not of the model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def child(steps: int, num_tokens: int) -> dict:
    """Training tokens/s and batch-1 generation tokens/s of the cpu preset, this process."""
    import torch
    import torch.nn.functional as F

    from cadenza.models.generator import GeneratorConfig, TransformerXL

    torch.manual_seed(0)
    config = GeneratorConfig(
        vocab_size=466, d_model=192, n_layers=4, n_heads=4, d_ff=768, seg_len=128,
        mem_len=128, dropout=0.1, bos_id=1,
    )  # fmt: skip
    model = TransformerXL(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(2, 466, (16, config.seg_len + 1))
    tokens[:, ::40] = 1
    mems = None
    for step in range(steps + 1):  # the first step warms up
        if step == 1:
            started = time.perf_counter()
        logits, mems = model(tokens[:, :-1], mems)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    train = 16 * config.seg_len * steps / (time.perf_counter() - started)
    prompt = torch.ones(1, 1, dtype=torch.long)
    model.generate(prompt, 16, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    model.generate(prompt, num_tokens, generator=torch.Generator().manual_seed(0))
    generate = num_tokens / (time.perf_counter() - started)
    return {"train": train, "generate": generate, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps")
    parser.add_argument("--tokens", type=int, default=256, help="generated tokens, batch 1")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.tokens)))
        return
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, env in SETTINGS.items():
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--steps", str(args.steps),
                 "--tokens", str(args.tokens)],
                env={**base, **env}, capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{os.cpu_count()} cores; load average at the end: {load}")
    for metric, label in (("train", "training"), ("generate", "generation, batch 1")):
        print(f"\n{label} (tokens/s)")
        for name, runs in results.items():
            values = [r[metric] for r in runs]
            print(
                f"  {name:<9} {statistics.median(values):9,.0f} "
                f"(min {min(values):,.0f}, max {max(values):,.0f}, n={len(values)}, "
                f"{runs[0]['threads']} threads)"
            )
        for name in ("1 thread", "passive"):
            ratios = [
                a[metric] / b[metric] for a, b in zip(results[name], results["active"], strict=True)
            ]
            print(
                f"  ratio {name} / active: {statistics.median(ratios):.2f} "
                f"(per round {', '.join(f'{r:.2f}' for r in ratios)})"
            )


if __name__ == "__main__":
    main()
