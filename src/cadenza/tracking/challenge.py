"""The challenger against the champion, paired on the current evaluation's windows.

The challenger's evaluation left reports/evaluate/windows.npz: the window plan, the real
windows of the current test split and its samples. The champion is scored on exactly those:
- when its own evaluation used the same tokens (corpus, split, tokenizer) and the same sample
  fingerprint (plan, seeds, sampling), its stored samples are reused (from its MLflow run);
- otherwise it is re-evaluated: loaded from the registry, its test NLL measured on the current
  test split, its samples generated with the current plan and seeds.
Both sets of windows are then read with the current encoder and scored by every probe on the
same bootstrap draws; the paired difference (challenger - champion) decides.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cadenza.config import EvaluateSettings
from cadenza.evaluation.context import (
    WINDOWS_FILE,
    features_of,
    model_windows,
    prepare_encoder,
    test_nll,
)
from cadenza.evaluation.instrument import Instrument, compare, window_set
from cadenza.evaluation.windows import RealWindows, WindowPlan
from cadenza.generate import load_generator, resolve_model_dir
from cadenza.paths import Paths
from cadenza.tokens.tokenizer import uses_voice_programs
from cadenza.training.pretrain import resolve_device

log = logging.getLogger(__name__)


class ChallengeError(RuntimeError):
    """The champion cannot be scored on the challenger's windows; the message says why."""


@dataclass
class Challenge:
    comparison: dict  # probes.paired_difference of challenger vs champion, plus "probe"
    champion_nll: float
    how: str  # "stored samples" or "re-evaluated on the current test split"


def _stored(windows_npz: Path) -> dict:
    with np.load(windows_npz) as data:
        return {key: data[key] for key in data.files}


def _champion_samples(client, champion, paths: Paths, fingerprint: str, tokens_md5: str):
    """The champion's stored samples when its evaluation matches the current one, else None."""
    tags = champion.tags
    if tags.get("dvc.tokens_md5") != tokens_md5 or tags.get("samples.fingerprint") != fingerprint:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(tags["run_id"], "report/windows.npz", tmp)
        except Exception:  # noqa: BLE001 - an older evaluation stored no windows
            return None
        stored = _stored(Path(local))
    return stored.get(f"samples_{tags.get('candidate', '')}")


def challenge(
    paths: Paths, settings: EvaluateSettings, client, model_name: str, champion, tokens_md5: str
) -> Challenge:
    stored = _stored(paths.root / "reports" / "evaluate" / WINDOWS_FILE)
    fingerprint = str(stored["fingerprint"])
    offsets = stored["offsets"]
    plan = WindowPlan(settings.window_len, settings.sample_len, stored["bin_edges"], offsets)
    device = resolve_device(settings.device)
    context = prepare_encoder(settings, paths, device, plan)
    if str(context.fingerprint()) != fingerprint:
        raise ChallengeError(
            "params.yaml's evaluate section changed since the evaluation; re-run `cadenza "
            "evaluate` before registering"
        )
    real_tokens = stored["real_tokens"].astype(np.int64)
    context.real = RealWindows(real_tokens, stored["real_documents"], 0, [])
    features, music = features_of(context, real_tokens)
    context.real_set = window_set(plan, features, stored["real_documents"], music)
    candidate = str(_evaluation_candidate(paths))
    seed = settings.seed + 1
    sets = {}
    with torch.no_grad():
        _, sets["challenger"] = model_windows(
            context, None, seed, stored[f"samples_{candidate}"].astype(np.int64)
        )
        samples = _champion_samples(client, champion, paths, fingerprint, tokens_md5)
        if samples is not None:
            how = "stored samples of its evaluation (same test split and seeds)"
            champion_nll = float(champion.tags["metrics.test_nll"])
            _, sets["champion"] = model_windows(context, None, seed, samples.astype(np.int64))
        else:
            how = "re-evaluated on the current test split"
            net, champion_tokenizer = _load_champion(model_name, champion, context.tokenizer)
            net.to(device)
            champion_nll = test_nll(net, paths, device)
            _, sets["champion"] = model_windows(context, net, seed, tokenizer=champion_tokenizer)
    instrument = Instrument(plan, context.real_set, settings.folds, settings.cv_repeats,
                            settings.bootstrap, settings.seed)  # fmt: skip
    scores = {
        name: {probe: instrument.score(s, probe) for probe in s.features}
        for name, s in sets.items()
    }
    log.info("champion version %s: %s", champion.version, how)
    return Challenge(compare(scores, "challenger", "champion"), champion_nll, how)


def _evaluation_candidate(paths: Paths) -> str:
    return json.loads(paths.metrics_path("evaluate").read_text())["candidate"]


def _load_champion(model_name: str, champion, tokenizer):
    """(generator, tokenizer) of the champion from the registry; its vocabulary must be the
    current one."""
    workdir = Path(tempfile.mkdtemp(prefix="cadenza-champion-"))
    folder = resolve_model_dir(f"models:/{model_name}/{champion.version}", workdir)
    net, champion_tokenizer = load_generator(folder)
    then, now = uses_voice_programs(champion_tokenizer), uses_voice_programs(tokenizer)
    if champion_tokenizer.vocab != tokenizer.vocab or then != now:
        what = (
            f"{len(champion_tokenizer.vocab)} tokens vs {len(tokenizer.vocab)} now"
            if champion_tokenizer.vocab != tokenizer.vocab
            else f"tokenize.voice_programs {then} vs {now} now: the same tokens, other parts"
        )
        raise ChallengeError(
            f"{model_name} version {champion.version} uses another tokenizer ({what}): its "
            "samples cannot be read on the current windows; compare by listening and promote "
            "by hand (`cadenza registry promote N --force --reason ...`)"
        )
    # A key-normalized champion (or challenger) is fine: its samples are placed in keys by
    # its own tokenizer, so both are read in real keys on the same windows.
    return net, champion_tokenizer
