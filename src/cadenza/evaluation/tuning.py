"""Choose sampling settings by the evaluation's strongest probe on the validation split.

Every candidate setting (temperature, top-k, top-p, grammar, pitch nucleus) samples from the
same generator with the same plan and the same random numbers (common seeds), its windows
are read by the same probes against real *valid* windows (never test), and each is compared
with plain temperature-1 sampling by the paired cluster bootstrap of the instrument. The
chosen setting is the one with the lowest strongest-probe accuracy among those the paired
comparison finds harder to tell from real than plain sampling (p < 0.05), else plain
sampling; `cadenza tune-sampling --apply` writes it to the `sampling` section of
params.yaml, which generate, serving, the gallery and the listening clips all read.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import torch

from cadenza.evaluation.context import instrument_for, model_windows, prepare, sample_model
from cadenza.evaluation.instrument import compare
from cadenza.generate import clean_ids, load_generator
from cadenza.sampling import PLAIN, Sampling
from cadenza.tokens.encode import modal_velocity, retokenize
from cadenza.tokens.store import load_split
from cadenza.training.pretrain import evaluate_nll, resolve_device

log = logging.getLogger(__name__)
ALPHA = 0.05  # a setting replaces plain sampling only at paired p < ALPHA


def grid(
    temperatures: list[float], top_ks: list[int], top_ps: list[float],
    grammars: tuple[bool, ...] = (False,), pitch_top_ps: tuple[float, ...] = (1.0,),
) -> list[Sampling]:  # fmt: skip
    """Every combination, plain temperature-1 sampling first (the reference)."""
    settings = [PLAIN]
    for t in temperatures:
        for k in top_ks:
            for p in top_ps:
                for q in pitch_top_ps:
                    if t <= 0 or k < 0 or not 0 < p <= 1 or not 0 < q <= 1:
                        raise ValueError(
                            f"sampling grid: temperature {t} must be > 0, top_k {k} >= 0, "
                            f"top_p {p} and pitch_top_p {q} in (0, 1]"
                        )
                    for g in grammars:
                        setting = Sampling(float(t), int(k), float(p), bool(g), float(q))
                        if setting not in settings:
                            settings.append(setting)
    return settings


def tune(evaluate_settings, paths, model_dir, settings: list[Sampling]) -> dict:
    """Score every setting on valid windows; returns the table and the chosen setting."""
    started = time.perf_counter()
    device = resolve_device(evaluate_settings.device)
    context = prepare(evaluate_settings, paths, device, split="valid")
    net, tokenizer = load_generator(model_dir)
    net.to(device)
    s = evaluate_settings
    sets = {}
    for setting in settings:
        with torch.no_grad():
            _, sets[setting.name] = model_windows(
                context, net, s.seed + 1, sampling=setting, tokenizer=tokenizer
            )
        log.info("tune-sampling: %s sampled", setting.name)
    results, scores = instrument_for(context).evaluate(sets)
    plain = settings[0].name
    rows = []
    for setting in settings:
        r = results[setting.name]
        row = {
            **setting.as_dict(),
            "name": setting.name,
            "accuracy": r["discriminative_accuracy"],
            "ci_low": r["discriminative_accuracy_ci_low"],
            "ci_high": r["discriminative_accuracy_ci_high"],
            "probe": r["discriminative_probe"],
            "probes": {p: v["accuracy"] for p, v in r["probes"].items()},
            "music": _music_summary(r["position_bins"]),
        }
        if setting.name != plain:
            row["vs_plain"] = {
                k: v
                for k, v in compare(scores, setting.name, plain).items()
                if k in ("difference", "ci_low", "ci_high", "p_value", "probe", "by_probe")
            }
        rows.append(row)
    chosen = choose(rows)
    return {
        "model": str(model_dir),
        "split": "valid",
        "real_documents": context.real.num_documents,
        "num_samples": s.num_samples,
        "num_windows": s.num_samples * context.plan.num_bins,
        "window_len": s.window_len,
        "sample_len": s.sample_len,
        "bootstrap": s.bootstrap,
        "rows": rows,
        "chosen": {
            k: chosen[k]
            for k in ("temperature", "top_k", "top_p", "grammar", "pitch_top_p", "accuracy")
        },
        "seconds": time.perf_counter() - started,
    }


def choose(rows: list[dict], alpha: float = ALPHA) -> dict:
    """Plain sampling (the first row) unless a setting is harder to tell from real than plain
    by the paired comparison on the strongest probe (difference < 0 at p < alpha): then the
    lowest strongest-probe accuracy among those. Like the registry's gate, a setting must win
    on evidence; a saturated probe that tells every setting from real changes nothing."""
    better = [
        row for row in rows[1:]
        if row["vs_plain"]["difference"] < 0 and row["vs_plain"]["p_value"] < alpha
    ]  # fmt: skip
    return min(better, key=lambda row: row["accuracy"]) if better else rows[0]


def compare_generators(
    evaluate_settings, paths, folders: dict[str, object], split: str = "test"
) -> dict:
    """Two generators on the same windows (same plan, same seeds, the pipeline's sampling):
    each one's probes and the paired difference of the first minus the second. A generator
    with another tokenizer than the pipeline's (say, without Velocity tokens) has its samples
    re-encoded into the pipeline's, so both are read as windows of equal length in the same
    tokens; its test NLL is per token of its own tokenization and, for both, per note, and
    `test_nll_ratio` pairs their test nats document by document (paired_nll)."""
    if len(folders) != 2:
        raise ValueError("compare needs exactly two generators")
    for folder in folders.values():  # before any work
        if not (Path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: no config.json; is it a Cadenza checkpoint?")
    started = time.perf_counter()
    device = resolve_device(evaluate_settings.device)
    context = prepare(evaluate_settings, paths, device, split=split)
    reference_test = _test_documents(paths, context.tokenizer)
    sets, nll, per_note, tokenizers, nats = {}, {}, {}, {}, {}
    for name, folder in folders.items():
        net, tokenizer = load_generator(folder)
        net.to(device)
        foreign = tokenizer.vocab != context.tokenizer.vocab
        tokenizers[name] = "own" if not foreign else "re-encoded"
        nll[name], per_note[name], nats[name], _ = _test_nll(
            net, tokenizer, context.tokenizer, reference_test
        )
        samples = None
        if foreign:  # its samples re-encoded: windows of the same music as the real ones
            samples = _foreign_samples(context, net, tokenizer, evaluate_settings.seed + 1)
        with torch.no_grad():
            _, sets[name] = model_windows(
                context, net, evaluate_settings.seed + 1, samples=samples, tokenizer=tokenizer
            )
    results, scores = instrument_for(context).evaluate(sets)
    a, b = folders
    return {
        "split": split,
        "real_documents": context.real.num_documents,
        "num_windows": evaluate_settings.num_samples * context.plan.num_bins,
        "sampling": evaluate_settings.sampling.model_dump(),
        "models": {
            name: {
                "folder": str(folders[name]),
                "test_nll": nll[name],
                "test_nll_per_note": per_note[name],
                "tokenizer": tokenizers[name],
                **{k: v for k, v in results[name].items() if k != "position_bins"},
                "music": _music_summary(results[name]["position_bins"]),
            }
            for name in folders
        },
        "comparison": compare(scores, a, b),
        "test_nll_ratio": paired_nll(nats[a], nats[b], evaluate_settings.seed),
        "seconds": time.perf_counter() - started,
    }


def _test_documents(paths, tokenizer) -> list[list[int]]:
    """The test split's documents as clean ids of the reference tokenizer."""
    tokens, offsets = load_split(paths.tokens_dir, "test")
    return [
        clean_ids(tokenizer, tokens[a:b].astype(int).tolist())
        for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]


def _test_nll(net, tokenizer, reference, documents: list[list[int]]):
    """(nats per token, nats per note, each document's nats, each document's notes) on the
    test documents written by `tokenizer` (re-encoded from the reference's when the
    vocabularies differ): per note is what two tokenizations can be compared on. Each
    document is scored on its own, from its [BOS] (the model attends no further back)."""
    bos, eos = tokenizer["BOS_None"], tokenizer["EOS_None"]
    same = tokenizer.vocab == reference.vocab
    device = next(net.parameters()).device
    nats, notes, num_tokens = [], [], 0
    for ids in documents:
        own = ids if same else retokenize(ids, reference, tokenizer)
        stream = np.asarray([bos, *own, eos], dtype=np.int64)
        nats.append(evaluate_nll(net, stream, net.config.seg_len, device) * (len(stream) - 1))
        notes.append(reference.decode(ids).note_num() if ids else 0)
        num_tokens += len(stream) - 1
    nats, notes = np.asarray(nats), np.asarray(notes)
    return nats.sum() / max(num_tokens, 1), nats.sum() / max(notes.sum(), 1), nats, notes


def paired_nll(nats_a: np.ndarray, nats_b: np.ndarray, seed: int = 0, draws: int = 2000) -> dict:
    """Ratio of a's total test nats to b's on the same documents (below 1: a predicts them
    better): a document bootstrap's 95% CI, and the p-value of a paired permutation test
    (a and b swapped within documents), exact where the bootstrap's runs over alpha."""
    from scipy.stats import permutation_test

    nats_a, nats_b = np.asarray(nats_a, dtype=float), np.asarray(nats_b, dtype=float)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(nats_a), (draws, len(nats_a)))
    replicates = nats_a[rows].sum(1) / nats_b[rows].sum(1)
    p_value = 1.0  # one document: both of its 2 arrangements are as extreme (exact)
    if len(nats_a) > 1:
        p_value = permutation_test(
            (nats_a, nats_b), lambda a, b, axis: a.sum(axis) / b.sum(axis), vectorized=True,
            permutation_type="samples", n_resamples=draws, rng=rng,
        ).pvalue  # fmt: skip
    return {
        "ratio": float(nats_a.sum() / nats_b.sum()),
        "ci_low": float(np.quantile(replicates, 0.025)),
        "ci_high": float(np.quantile(replicates, 0.975)),
        "p_value": float(p_value),
        "documents": len(nats_a),
        "draws": draws,
    }


def _foreign_samples(context, net, tokenizer, seed: int):
    """(num_samples, sample_len) samples of a generator with another tokenizer, in the
    context's: generated with the same plan, seeds and sampling, placed in keys as the
    evaluation places them, re-encoded note for note (velocities: the real windows' most
    common one, when the generator writes none), cut to the plan's length."""
    plan, reference = context.plan, context.tokenizer
    own = sample_model(context, net, seed, tokenizer=tokenizer)
    velocity = modal_velocity(reference, context.real.tokens)
    pad = reference["PAD_None"]
    out = np.full((len(own), plan.sample_len), pad, dtype=own.dtype)
    short = 0
    for row, ids in enumerate(own):
        moved = retokenize(clean_ids(tokenizer, ids.astype(int).tolist()), tokenizer, reference,
                           velocity)[: plan.sample_len]  # fmt: skip
        out[row, : len(moved)] = moved
        short += len(moved) < plan.sample_len
    if short:
        log.warning("%d of %d re-encoded samples are shorter than %d tokens (padded)",
                    short, len(own), plan.sample_len)  # fmt: skip
    return out


def _music_summary(bins: list[dict]) -> dict:
    """Worst bin's gap to real windows for each music check (generated - real)."""
    gaps: dict[str, float] = {}
    for entry in bins:
        for check, values in entry["music"].items():
            gap = values["generated"] - values["real"]
            if check not in gaps or abs(gap) > abs(gaps[check]):
                gaps[check] = gap
    return gaps


def markdown(result: dict) -> str:
    """The sweep as a table, plain sampling first."""
    checks = list(result["rows"][0]["music"])
    head = ["setting", "strongest probe acc. [95% CI]", "probe", "vs plain [95% CI], p"]
    head += [f"worst-bin gap: {c}" for c in checks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        versus = row.get("vs_plain")
        cells = [
            row["name"],
            f"{row['accuracy']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]",
            row["probe"],
            "reference"
            if versus is None
            else f"{versus['difference']:+.3f} [{versus['ci_low']:+.3f}, {versus['ci_high']:+.3f}]"
            f", p={versus['p_value']:.2f}",
        ]
        cells += [f"{row['music'][c]:+.3f}" for c in checks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def apply(params_path, chosen: dict) -> None:
    """Write the chosen setting into params.yaml's `sampling` section, keeping comments."""
    text = params_path.read_text()
    for key in ("temperature", "top_k", "top_p", "grammar", "pitch_top_p"):
        pattern = re.compile(
            rf"^(sampling:.*\n(?:[ \t]+.*\n|\n)*?[ \t]+{key}:[ \t]*)([^ \t#\n]+)", re.M
        )
        if key == "pitch_top_p" and not pattern.search(text) and chosen.get(key, 1.0) == 1.0:
            continue  # a params.yaml from before the option: off is its default
        if not pattern.search(text):
            raise ValueError(
                f"{params_path}: no `sampling.{key}` to update; add a `sampling:` section with "
                "temperature, top_k and top_p"
            )
        value = chosen[key]
        written = str(value).lower() if isinstance(value, bool) else format(value, "g")
        text = pattern.sub(lambda m, v=written: m.group(1) + v, text, count=1)
    params_path.write_text(text)
