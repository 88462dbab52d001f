"""`tokenize` stage: train/build the tokenizer, encode every split into flat token arrays.

Writes, under data/tokens/, tokenizer.json and each split's arrays in the layout
tokens/store.py reads (all documents concatenated plus document offsets), and
metrics/tokenize.json. Augmentation (transposition, time stretch) is applied to the train
split only. The arrays are written to a staging folder and swapped in whole.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cadenza.config import TokenizeSettings
from cadenza.io import replace_dir, write_json
from cadenza.paths import Paths
from cadenza.tokens.encode import EncodeJob, encode_all, number_voices
from cadenza.tokens.keys import KEY_SHIFTS, SHIFTS, histogram
from cadenza.tokens.store import key_shifts_path, originals_path, token_dtype, write_split
from cadenza.tokens.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass
class TokenizeResult:
    vocab_size: int
    num_tokens: dict[str, int]
    num_documents: dict[str, int]
    seconds: float


def _bpe_training_files(train: list[str], settings: TokenizeSettings, scratch: Path) -> list[Path]:
    """The files BPE learns from: the train files, or with voice_programs their numbered
    copies in scratch (miditok reads the files itself, so it must see what encoding sees)."""
    if not settings.voice_programs:
        return [Path(p) for p in train]
    from symusic import Score  # miditok's MIDI library, needed only for this copy

    copies = []
    for i, path in enumerate(train):
        copy = scratch / f"{i:06d}.mid"
        number_voices(Score(path)).dump_midi(str(copy))
        copies.append(copy)
    return copies


def _counts(shifts: list[int]) -> dict[str, int]:
    """{"-6": n, ..., "5": n}: how many train files were moved by each shift."""
    return {str(s): n for s, n in zip(SHIFTS.tolist(), histogram(shifts), strict=True)}


def _save_key_histogram(tokenizer, tokenizer_path: Path, train_shifts: list[int]) -> None:
    tokenizer.config.additional_params[KEY_SHIFTS] = histogram(train_shifts)
    tokenizer.save(tokenizer_path)


def _split_files(paths: Paths) -> dict[str, list[str]]:
    if not paths.splits_path.is_file():
        raise FileNotFoundError(f"{paths.splits_path}: no splits; run `cadenza split` first")
    splits = pd.read_csv(paths.splits_path)
    files = {
        s: [str(paths.raw_dir / p) for p in splits.loc[splits["split"] == s, "path"]]
        for s in SPLITS
    }
    if not files["train"]:
        raise ValueError(f"{paths.splits_path}: the train split is empty; nothing to tokenize")
    return files


def _tokenizer(settings: TokenizeSettings, train_files: list[str], staging: Path):
    """The miditok tokenizer (BPE-trained on the train files when asked), saved in staging."""
    tokenizer = build_tokenizer(
        settings.tokenizer,
        settings.num_velocities,
        tuple(settings.pitch_range),
        settings.beat_resolution,
        settings.voice_programs,
        settings.key_normalize,
    )
    if settings.bpe_vocab_size:
        log.info(
            "training BPE to %d tokens on %d train files", settings.bpe_vocab_size, len(train_files)
        )
        with tempfile.TemporaryDirectory(dir=staging) as numbered:
            tokenizer.train(
                vocab_size=settings.bpe_vocab_size,
                model="BPE",
                files_paths=_bpe_training_files(train_files, settings, Path(numbered)),
            )
    tokenizer.save(staging / "tokenizer.json")
    return tokenizer


@dataclass
class _Counts:
    num_tokens: dict[str, int] = field(default_factory=dict)
    num_documents: dict[str, int] = field(default_factory=dict)
    num_notes: dict[str, int] = field(default_factory=dict)
    key_shifts: dict[str, list[int]] = field(default_factory=dict)
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def _encode_splits(settings, files, staging: Path, dtype) -> _Counts:
    """Every split encoded in parallel into staging; train with its augmented copies."""
    workers = settings.num_workers or os.cpu_count() or 1
    counts = _Counts()
    for split in SPLITS:
        augment = split == "train"
        jobs = [
            EncodeJob(
                path,
                tuple(settings.transpositions) if augment else (),
                tuple(settings.time_stretches) if augment else (),
            )
            for path in files[split]
        ]
        encoded = encode_all(jobs, staging / "tokenizer.json", workers)
        summary = write_split(staging, split, encoded, dtype)
        counts.errors += summary.errors
        counts.skipped += summary.num_skipped
        counts.num_notes[split] = summary.num_notes
        counts.num_tokens[split] = summary.num_tokens
        counts.num_documents[split] = summary.num_documents
        counts.key_shifts[split] = summary.file_key_shifts
        if augment:  # which train documents are the corpus as written (pretrain's final phase)
            np.save(originals_path(staging, split), np.asarray(summary.originals, bool))
        if settings.key_normalize:  # evaluation moves real windows back into their own keys
            np.save(key_shifts_path(staging, split), np.asarray(summary.key_shifts, np.int8))
    return counts


def _metrics(settings, tokenizer, dtype, counts: _Counts, num_files: int, seconds: float):
    # Tokens per note on the un-augmented splits (train is augmented, so use valid + test).
    tokens, documents = counts.num_tokens, counts.num_documents
    plain_tokens = tokens["valid"] + tokens["test"] - 2 * (documents["valid"] + documents["test"])
    plain_notes = counts.num_notes["valid"] + counts.num_notes["test"]
    shifts = {"key_shifts_train": _counts(counts.key_shifts["train"])}
    return {
        "tokenizer": settings.tokenizer,
        "vocab_size": len(tokenizer),
        "dtype": np.dtype(dtype).name,
        "num_tokens": tokens,
        "num_documents": documents,
        "tokens_per_note": round(plain_tokens / plain_notes, 4) if plain_notes else None,
        "files_per_second": round(num_files / seconds, 2),
        "skipped_transpositions": counts.skipped,
        **(shifts if settings.key_normalize else {}),
        "seconds": round(seconds, 2),
    }


def run(settings: TokenizeSettings, paths: Paths) -> TokenizeResult:
    started = time.perf_counter()
    files = _split_files(paths)
    tokens_dir = paths.tokens_dir
    staging = tokens_dir.with_name(f".{tokens_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = _tokenizer(settings, files["train"], staging)
    dtype = token_dtype(len(tokenizer))
    counts = _encode_splits(settings, files, staging, dtype)
    if settings.key_normalize:  # generation draws its keys from the train split's
        _save_key_histogram(tokenizer, staging / "tokenizer.json", counts.key_shifts["train"])
    if counts.errors:
        shutil.rmtree(staging)
        errors = "\n".join(counts.errors[:10])
        raise ValueError("could not read files listed in the splits:\n" + errors)
    replace_dir(staging, tokens_dir)
    seconds = time.perf_counter() - started
    num_files = sum(len(v) for v in files.values())
    metrics = _metrics(settings, tokenizer, dtype, counts, num_files, seconds)
    write_json(paths.metrics_path("tokenize"), metrics)
    return TokenizeResult(len(tokenizer), counts.num_tokens, counts.num_documents, seconds)
