"""Does the learned probe read generated windows differently with another SpanBERT encoder?

    python benchmarks/encoder_probe.py --root . models/discriminator /tmp/enc-muon-400

Reads `reports/evaluate/windows.npz` of an evaluated root (the real windows, every model's
samples and the window plan), encodes the same windows with each encoder folder given, refits
the learned and the combined probe on each encoder's features with the evaluation's settings
(5 folds, 2 repeats, 100 cluster-bootstrap draws, seed 0), and prints each probe's accuracy
with its 95% interval and the paired difference of every other encoder against the first on
the same draws. The strongest probe (music statistics) reads no encoder, so it is left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    from cadenza.evaluation import discriminative, probes
    from cadenza.evaluation.context import load_encoder
    from cadenza.evaluation.windows import WindowPlan, cut

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("encoders", type=Path, nargs="+", help="discriminator folders")
    args = parser.parse_args()

    windows_file = args.root / "reports" / "evaluate" / "windows.npz"
    if not windows_file.is_file():
        parser.error(f"{windows_file} is missing: run `cadenza evaluate` in {args.root} first")
    for folder in args.encoders:
        if not (folder / "config.json").is_file():
            parser.error(f"{folder}: no config.json, not a discriminator folder")
    stored = np.load(windows_file)
    offsets = stored["offsets"]
    num_samples, num_bins = offsets.shape
    models = [k.removeprefix("samples_") for k in stored.files if k.startswith("samples_")]
    window_len, sample_len = (
        stored["real_tokens"].shape[-1],
        stored[f"samples_{models[0]}"].shape[1],
    )
    plan = WindowPlan(window_len, sample_len, stored["bin_edges"], offsets)
    real = stored["real_tokens"].reshape(num_samples * num_bins, -1)
    real_groups = stored["real_documents"].reshape(-1)
    fake_groups = np.repeat(np.arange(num_samples), num_bins)
    draws = probes.make_draws(real_groups, fake_groups, args.draws, 0)
    fake = {m: cut(stored[f"samples_{m}"], plan).reshape(len(real), -1) for m in models}

    scores = {}
    for folder in args.encoders:
        encoder = load_encoder(folder)
        real_learned = discriminative.encoder_features(encoder, real, "cpu")
        for model in models:
            fake_learned = discriminative.encoder_features(encoder, fake[model], "cpu")
            pairs = {
                "learned": (real_learned, fake_learned),
                "combined": (np.hstack([real_learned, stored["real_music"]]),
                             np.hstack([fake_learned, stored[f"{model}_music"]])),
            }  # fmt: skip
            for probe, (r, f) in pairs.items():
                data = probes.ProbeInput(r, f, real_groups, fake_groups)
                score = probes.score(data, draws, 5, 2, 0)
                scores[folder, model, probe] = score
                low, high = score.interval()
                print(f"{folder}  {model:8s} {probe:9s} {score.accuracy:.3f} "
                      f"[{low:.3f}, {high:.3f}] width {high - low:.3f}", flush=True)  # fmt: skip
    first, *others = args.encoders
    for folder in others:
        for model in models:
            for probe in ("learned", "combined"):
                d = probes.paired_difference(
                    scores[folder, model, probe], scores[first, model, probe]
                )
                interval = f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                print(f"{folder} - {first}  {model:8s} {probe:9s} {d['difference']:+.3f} "
                      f"{interval} p = {d['p_value']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
