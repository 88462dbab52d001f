"""Transfer from the base model: the checks that run before a target's pretraining starts
from models/generator-base/ (pretrain.init = base), and the record it leaves behind.

Base and target must share one vocabulary: the same token ids must mean the same tokens.
The base folder carries the tokenizer it was trained with (tokenizer.json, copied there by
its pretrain stage); it is compared with the target's data/tokens/tokenizer.json before any
token array is read. Architecture keys that shape the weights must match too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cadenza.io import file_digest
from cadenza.paths import BASE_RECORD as BASE_RECORD  # the transfer's record (paths.py names it)
from cadenza.paths import LINEAGE, Paths
from cadenza.tokens.tokenizer import load_tokenizer, uses_voice_programs
from cadenza.training.checkpoint import WEIGHTS, read_config

SHAPE_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "rezero")


def _vocabulary(path: Path) -> dict[str, int]:
    return dict(load_tokenizer(path).vocab)


def _voice_programs(path: Path) -> bool:
    return uses_voice_programs(load_tokenizer(path))


def describe_tokenizer(path: Path) -> str:
    """'REMI, 530 tokens, vocabulary sha256 1a2b3c4d5e6f' for error messages."""
    raw = json.loads(path.read_text())
    vocab = _vocabulary(path)
    digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:12]
    return f"{raw.get('tokenization')}, {len(vocab)} tokens, vocabulary sha256 {digest}"


def check_tokenizers(base_tokenizer: Path, target_tokenizer: Path) -> None:
    """Raise ValueError naming both tokenizers when their vocabularies differ."""
    if not base_tokenizer.is_file():
        raise ValueError(
            f"pretrain.init = base: {base_tokenizer} is missing, so the base model's vocabulary "
            "is unknown; re-run the base pipeline (dvc repro base/dvc.yaml)"
        )
    base_vocab, target_vocab = _vocabulary(base_tokenizer), _vocabulary(target_tokenizer)
    voices = [_voice_programs(p) for p in (base_tokenizer, target_tokenizer)]
    if base_vocab == target_vocab and voices[0] != voices[1]:
        raise ValueError(
            "pretrain.init = base: the base model and this corpus number voices differently "
            f"(tokenize.voice_programs: {voices[0]} in {base_tokenizer}, {voices[1]} in "
            f"{target_tokenizer}): the same Program token would mean another part. Set "
            "tokenize.voice_programs equal in params.yaml and base/params.yaml and re-run "
            "tokenize, or retrain the base."
        )
    if base_vocab == target_vocab:
        return
    only_base = sorted(set(base_vocab) - set(target_vocab))[:3]
    only_target = sorted(set(target_vocab) - set(base_vocab))[:3]
    moved = sorted(
        t for t in set(base_vocab) & set(target_vocab) if base_vocab[t] != target_vocab[t]
    )
    raise ValueError(
        "pretrain.init = base: the base model and this corpus use different tokenizers:\n"
        f"  base:   {base_tokenizer} ({describe_tokenizer(base_tokenizer)})\n"
        f"  target: {target_tokenizer} ({describe_tokenizer(target_tokenizer)})\n"
        f"  only in base: {only_base or '-'}; only in target: {only_target or '-'}; "
        f"same token, other id: {moved[:3] or '-'}\n"
        "Set the tokenize section of params.yaml equal to base/params.yaml's (tokenizer, "
        "num_velocities, pitch_range, beat_resolution, bpe_vocab_size, voice_programs) and "
        "re-run tokenize, or retrain the base with the target's settings."
    )


def check_architecture(base_dir: Path, model_config: dict) -> None:
    base_model = read_config(base_dir)["model"]
    diffs = [
        f"{key} {base_model.get(key)!r} (base) vs {model_config[key]!r} (target)"
        for key in SHAPE_KEYS
        if base_model.get(key) != model_config[key]
    ]
    if diffs:
        raise ValueError(
            f"pretrain.init = base: {base_dir} has another architecture: {'; '.join(diffs)}; "
            "train the base with the target's preset (pretrain.preset in both params files)"
        )


def prepare(paths: Paths, model_config: dict) -> dict:
    """Check the base before any work; return the record of the transfer."""
    base_dir = paths.base_model_dir
    if not (base_dir / WEIGHTS).is_file():
        raise ValueError(
            f"pretrain.init = base: {base_dir / WEIGHTS} not found; build the base first "
            "(`dvc repro base/dvc.yaml`), or set pretrain.init: scratch"
        )
    check_tokenizers(base_dir / "tokenizer.json", paths.tokens_dir / "tokenizer.json")
    check_architecture(base_dir, model_config)
    lineage_path = base_dir / LINEAGE
    return {
        "dir": str(base_dir.relative_to(paths.root)),
        "weights_sha256": file_digest(base_dir / WEIGHTS),
        "lineage": json.loads(lineage_path.read_text()) if lineage_path.is_file() else None,
    }
