"""Controlled generation measured on the test split: harmonized sopranos, infilled bars.

Harmonize: each test piece's top voice (its skeleton, tokens/control.py) is given and the
model writes the other voices; the harmonization is read against the piece as written, on
windows that start at the same bars. Infill: the middle `infill_bars` bars of each test piece
are rewritten with everything around them kept; the new span is read against the original
span. Both are read by the instrument's probes (music statistics, the frozen encoder's
features, both; the strongest is the headline), with the document as the cluster, and paired
against unconditional samples cut at the same bars, on the same bootstrap draws. The given
notes are counted back: a harmonization's top voice decoded against the original's, an
infill's tokens outside the span against the original's.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import torch

from cadenza.evaluation import discriminative, probes, window_stats
from cadenza.generate import clean_ids, decode_ids, harmonize_ids, infill_ids
from cadenza.models import grammar as g
from cadenza.sampling import Sampling
from cadenza.tokens.control import control_grammar, split_bars, voice_skeleton

log = logging.getLogger(__name__)


def bar_starts(grammar: g.TokenGrammar, ids: list[int]) -> list[int]:
    return [i for i, token in enumerate(ids) if grammar.kinds[token] == g.BAR]


def windows_at_bars(ids: list[int], starts: list[int], bars: list[int], length: int, pad: int):
    """(len(bars), length) windows of ids starting at the given bars' Bar tokens, PAD after
    the piece's end."""
    out = np.full((len(bars), length), pad, dtype=np.int64)
    for row, bar in enumerate(bars):
        part = ids[starts[bar] : starts[bar] + length] if bar < len(starts) else []
        out[row, : len(part)] = part
    return out


def opening_and_middle(starts: list[list[int]]) -> list[list[int]]:
    """The bars the task windows start at, per piece: bar 1 and the middle bar."""
    return [[0, len(s) // 2] for s in starts]


def task_windows(rows, starts, bars, length: int, pad: int) -> np.ndarray:
    """Every row's windows at its bars (windows_at_bars), stacked."""
    pieces = zip(rows, starts, bars, strict=True)
    return np.concatenate([windows_at_bars(ids, st, b, length, pad) for ids, st, b in pieces])


def top_voice_notes(tokenizer, ids: list[int]) -> Counter:
    """(onset, duration, pitch) of every note of voice 1 (Program_0) as decoded."""
    score = decode_ids(tokenizer, ids)
    notes = [t.notes for t in score.tracks if t.name == "Voice 1"]
    return Counter((n.time, n.duration, n.pitch) for track in notes for n in track)


def notes_changed(given: Counter, written: Counter) -> int:
    """Notes of `given` missing from `written`, plus notes `written` has that it lacks."""
    return sum((given - written).values()) + sum((written - given).values())


class Probe:
    """The instrument's probes on windows (real vs generated, document as the cluster)."""

    def __init__(self, tokenizer, encoder, device, folds: int, repeats: int, draws: int, seed):
        self.tokenizer, self.encoder, self.device = tokenizer, encoder, device
        self.folds, self.repeats, self.num_draws, self.seed = folds, repeats, draws, seed

    def features(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        music = window_stats.features_of_windows(self.tokenizer, windows)
        learned = discriminative.encoder_features(self.encoder, windows, self.device)
        return {"music": music, "learned": learned, "combined": np.hstack([learned, music])}

    def compare(self, real: np.ndarray, models: dict[str, np.ndarray], groups: np.ndarray):
        """(results per model, paired differences of each model against the first)."""
        draws = probes.make_draws(groups, groups, self.num_draws, self.seed)
        real_features = self.features(real)
        scores, results = {}, {}
        for name, windows in models.items():
            fake = self.features(windows)
            scores[name] = {
                probe: probes.score(
                    probes.ProbeInput(real_features[probe], fake[probe], groups, groups),
                    draws,
                    self.folds,
                    self.repeats,
                    self.seed,
                )  # fmt: skip
                for probe in real_features
            }
            per_probe = {p: s.to_dict() for p, s in scores[name].items()}
            strongest = max(per_probe, key=lambda p: per_probe[p]["accuracy"])
            results[name] = {"strongest_probe": strongest, **per_probe[strongest],
                             "probes": per_probe}  # fmt: skip
        first, *others = models
        pairs = {}
        for other in others:
            probe = results[first]["strongest_probe"]
            pairs[f"{first}_vs_{other}"] = {
                "probe": probe,
                **probes.paired_difference(scores[first][probe], scores[other][probe]),
            }
        return results, pairs


def unconditional(net, tokenizer, count: int, num_tokens: int, sampling: Sampling, seed: int):
    """count samples from [BOS] (clean ids), for the same bars as the controlled ones."""
    bos = torch.full((count, 1), tokenizer["BOS_None"], dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    out = net.generate(
        bos, num_tokens, sampling.temperature, sampling.top_k, sampling.top_p, generator,
        stop_token=tokenizer["EOS_None"],
    )  # fmt: skip
    return [clean_ids(tokenizer, row[1:].tolist()) for row in out]


def measure(net, tokenizer, documents: list[list[int]], probe: Probe, settings):
    """(examples, results): harmonize and infill every document (clean ids) long enough;
    examples holds the ids of those documents ("bach"), of their harmonizations and of the
    whole pieces with their span infilled. `settings` is the evaluate section
    (tasks_window_len, infill_bars, sampling, seed)."""
    grammar, vocab = control_grammar(tokenizer, "the control tasks")
    sampling, seed, length = settings.sampling.value, settings.seed, settings.tasks_window_len
    documents = [d for d in documents if len(bar_starts(grammar, d)) >= settings.infill_bars + 2]
    if len(documents) < 2:
        note = (
            f"{len(documents)} pieces have {settings.infill_bars + 2} bars or more: the "
            "probes need 2; add pieces to the test split or lower evaluate.infill_bars"
        )
        return {}, {"num_pieces": len(documents), "note": note}
    groups = np.repeat(np.arange(len(documents)), 2)
    started = time.perf_counter()
    skeletons = [voice_skeleton(grammar, d) for d in documents]
    harmonized, finished = harmonize_ids(net, tokenizer, skeletons, sampling, seed)
    harmonize_seconds = time.perf_counter() - started
    free = unconditional(net, tokenizer, len(documents), max(map(len, documents)), sampling, seed)
    starts = {name: [bar_starts(grammar, ids) for ids in rows]
              for name, rows in (("real", documents), ("harmonized", harmonized),
                                 ("unconditional", free))}  # fmt: skip
    bars = opening_and_middle(starts["real"])

    def cut(name, rows):
        return task_windows(rows, starts[name], bars, length, vocab.pad)

    harmonize, harmonize_pairs = probe.compare(
        cut("real", documents),
        {"harmonized": cut("harmonized", harmonized), "unconditional": cut("unconditional", free)},
        groups,
    )
    changed = sum(
        notes_changed(top_voice_notes(tokenizer, d), top_voice_notes(tokenizer, h))
        for d, h in zip(documents, harmonized, strict=True)
    )
    infill, filled = _infill(net, tokenizer, grammar, documents, free, starts, probe, settings)
    examples = {"bach": documents, "harmonized": harmonized, "infilled": filled}
    return examples, {
        "num_pieces": len(documents),
        "harmonize": {
            **harmonize,
            "comparisons": harmonize_pairs,
            "given_notes_changed": changed,
            "num_given_notes": sum(sum(top_voice_notes(tokenizer, d).values()) for d in documents),
            "finished": float(np.mean(finished)),
            "seconds_per_piece": harmonize_seconds / len(documents),
            "window_len": length,
            "windows": "bar 1 and the middle bar of each piece",
        },  # fmt: skip
        "infill": infill,
    }


def _infill(net, tokenizer, grammar, documents, free, starts, probe, settings):
    """(results, the whole infilled pieces): the middle infill_bars bars of each document
    rewritten, read against the original spans."""
    sampling, seed, num_bars = settings.sampling.value, settings.seed, settings.infill_bars
    pad = tokenizer["PAD_None"]
    started = time.perf_counter()
    real, filled, pieces, changed = [], [], [], 0
    spans = []
    for index, ids in enumerate(documents):
        first = (len(starts["real"][index]) - num_bars) // 2 + 1  # 1-based, centred
        span = split_bars(grammar, ids, first, first + num_bars - 1)
        result = infill_ids(net, tokenizer, span, sampling, seed + index)[0]
        body = result[len(span.prefix) : len(result) - len(span.suffix)]
        changed += _changed_outside(span, result)
        real.append(span.span)
        filled.append(body)
        pieces.append(result)
        spans.append(first)
    seconds = time.perf_counter() - started
    length = max(map(len, real + filled))
    free_spans = []
    for index, ids in enumerate(free):  # the unconditional samples' same bars
        st = starts["unconditional"][index]
        first = spans[index]
        begin = st[first - 1] + 1 if first - 1 < len(st) else len(ids)
        end = st[first - 1 + num_bars] if first - 1 + num_bars < len(st) else len(ids)
        free_spans.append(ids[begin:end])

    def rows(spans_ids):
        out = np.full((len(spans_ids), length), pad, dtype=np.int64)
        for i, ids in enumerate(spans_ids):
            out[i, : len(ids)] = ids[:length]
        return out

    groups = np.arange(len(documents))
    results, pairs = probe.compare(
        rows(real), {"infilled": rows(filled), "unconditional": rows(free_spans)}, groups
    )
    return {
        **results, "comparisons": pairs, "given_tokens_changed": changed,
        "num_bars": num_bars, "seconds_per_piece": seconds / len(documents),
        "span": f"{num_bars} bars from the middle bar of each piece",
    }, pieces  # fmt: skip


def _changed_outside(span, result: list[int]) -> int:
    """Tokens before and after the span that differ from the original's."""
    head, tail = result[: len(span.prefix)], result[len(result) - len(span.suffix) :]
    changed = sum(a != b for a, b in zip(head, span.prefix, strict=True))
    return changed + sum(a != b for a, b in zip(tail, span.suffix, strict=True))
