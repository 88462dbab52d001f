"""Discriminator rejection sampling (Azadi et al. 2019) with the interval critic, measured by
the evaluation's probes on VALIDATION windows.

    python benchmarks/rejection_sampling.py [--root .] [--model models/generator-mle]
        [--factor 4] [--critic-samples 256] [--out reports/rejection.json]

1. An IntervalCritic (models/interval_critic.py) learns real train chunks against chunks of
   `--critic-samples` generated samples (their own seed: never the evaluated ones).
2. The generator draws factor x evaluate.num_samples samples (evaluate.sample_len tokens,
   the pipeline's sampling); each is scored by its critic score averaged over its chunks.
3. "kept": the evaluate.num_samples highest-scoring; "first": the first evaluate.num_samples
   drawn (no selection, the control). Both are cut at the same plan of windows and read by
   the same probes against the same real valid windows; the paired difference kept - first
   (negative: selection makes samples harder to tell from real) with its cluster-bootstrap CI.

What it costs is factor x the generation; what it shows is whether the critic's signal, used
without any gradient, moves the probes. Not part of the pipeline (docs/EXPERIMENTS.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cadenza.config import load_settings
from cadenza.evaluation import windows
from cadenza.evaluation.context import instrument_for, model_windows, prepare
from cadenza.evaluation.instrument import compare
from cadenza.generate import load_generator
from cadenza.models.interval_critic import IntervalCritic
from cadenza.paths import Paths
from cadenza.tokens.keys import place_samples
from cadenza.tokens.stage import load_split
from cadenza.tokens.tokenizer import pitch_classes, tokens_per_note
from cadenza.training import adversarial as adv

CHUNK = 64


def draw(context, net, tokenizer, count: int, seed: int) -> np.ndarray:
    s = context.settings
    plan = windows.make_plan(count, s.sample_len, s.window_len, 1, seed)
    samples = windows.generate_samples(
        net, tokenizer, plan, s.sampling.value, seed, context.device, s.generation_batch
    )
    return place_samples(tokenizer, samples, seed)


def chunks(samples: np.ndarray) -> torch.Tensor:
    usable = samples.shape[1] // CHUNK * CHUNK
    return torch.from_numpy(samples[:, :usable].reshape(-1, CHUNK).astype(np.int64))


def train_critic(tokenizer, train, fake: np.ndarray, steps: int = 300) -> adv.Critic:
    per_note = tokens_per_note(tokenizer)  # neighbouring voices, and the voice after
    config = adv.AdversarialConfig(
        critic="intervals", chunk_len=CHUNK, interval_lags=(per_note, 2 * per_note)
    )
    torch.manual_seed(0)
    intervals = IntervalCritic(pitch_classes(tokenizer), config.interval_lags)
    real = adv.RealChunks(*train, CHUNK, 0)
    intervals.standardize(real.sample(512))
    critic = adv.Critic(None, config, intervals)
    pool = chunks(fake)
    for _ in range(steps):
        critic.update(real.sample(64), pool[torch.randint(len(pool), (64,))])
    return critic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--model", type=Path, default=Path("models/generator-mle"))
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--critic-samples", type=int, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    settings = load_settings(args.root / "params.yaml")
    paths = Paths(root=args.root.resolve(), corpus=settings.import_.corpus)
    context = prepare(settings.evaluate, paths, torch.device("cpu"), split="valid")
    net, tokenizer = load_generator(args.root / args.model)
    count, seed = settings.evaluate.num_samples, settings.evaluate.seed + 1
    with torch.no_grad():
        for_critic = draw(context, net, tokenizer, args.critic_samples, seed + 1000)
        pool = draw(context, net, tokenizer, args.factor * count, seed)
    critic = train_critic(tokenizer, load_split(paths.tokens_dir, "train"), for_critic)
    with torch.no_grad():
        per_chunk = torch.cat([critic.score(c) for c in chunks(pool).split(1024)])
    scores = per_chunk.reshape(len(pool), -1).mean(1).numpy()
    kept = pool[np.sort(np.argsort(-scores)[:count])]
    sets = {}
    for name, samples in (("kept", kept), ("first", pool[:count])):
        _, sets[name] = model_windows(context, None, seed, samples=samples)
    results, probe_scores = instrument_for(context).evaluate(sets)
    result = {
        "model": str(args.model),
        "split": "valid",
        "factor": args.factor,
        "num_samples": count,
        "critic_heldout_accuracy": critic.accuracy(
            adv.RealChunks(*load_split(paths.tokens_dir, "valid"), CHUNK, 2).sample(512),
            chunks(pool)[:512],
        ),
        "probes": {
            name: {p: v["accuracy"] for p, v in results[name]["probes"].items()} for name in sets
        },
        "kept_vs_first": compare(probe_scores, "kept", "first"),
        "seconds": time.perf_counter() - started,
    }
    c = result["kept_vs_first"]
    print(f"critic held-out accuracy (valid real vs pool chunks): "
          f"{result['critic_heldout_accuracy']:.3f}")  # fmt: skip
    print(json.dumps(result["probes"]))
    print(
        f"kept - first: {c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], "
        f"p = {c['p_value']:.3f} ({c['probe']} probe); by probe: "
        + ", ".join(
            f"{p} {v['difference']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"
            for p, v in c["by_probe"].items()
        )
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
