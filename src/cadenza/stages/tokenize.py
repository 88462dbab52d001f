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
from dataclasses import dataclass
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


def run(settings: TokenizeSettings, paths: Paths) -> TokenizeResult:
    started = time.perf_counter()
    if not paths.splits_path.is_file():
        raise FileNotFoundError(f"{paths.splits_path}: no splits; run `cadenza split` first")
    splits = pd.read_csv(paths.splits_path)
    files = {
        s: [str(paths.raw_dir / p) for p in splits.loc[splits["split"] == s, "path"]]
        for s in SPLITS
    }
    if not files["train"]:
        raise ValueError(f"{paths.splits_path}: the train split is empty; nothing to tokenize")

    tokens_dir = paths.tokens_dir
    staging = tokens_dir.with_name(f".{tokens_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
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
            "training BPE to %d tokens on %d train files",
            settings.bpe_vocab_size,
            len(files["train"]),
        )
        with tempfile.TemporaryDirectory(dir=staging) as numbered:
            tokenizer.train(
                vocab_size=settings.bpe_vocab_size,
                model="BPE",
                files_paths=_bpe_training_files(files["train"], settings, Path(numbered)),
            )
    tokenizer_path = staging / "tokenizer.json"
    tokenizer.save(tokenizer_path)
    dtype = token_dtype(len(tokenizer))
    workers = settings.num_workers or os.cpu_count() or 1

    num_tokens, num_documents, num_notes, skipped, errors = {}, {}, {}, 0, []
    key_shifts: dict[str, list[int]] = {}
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
        summary = write_split(staging, split, encode_all(jobs, tokenizer_path, workers), dtype)
        errors += summary.errors
        skipped += summary.num_skipped
        num_notes[split] = summary.num_notes
        num_tokens[split], num_documents[split] = summary.num_tokens, summary.num_documents
        key_shifts[split] = summary.file_key_shifts
        if augment:  # which train documents are the corpus as written (pretrain's final phase)
            np.save(originals_path(staging, split), np.asarray(summary.originals, bool))
        if settings.key_normalize:  # evaluation moves real windows back into their own keys
            np.save(key_shifts_path(staging, split), np.asarray(summary.key_shifts, np.int8))
    if settings.key_normalize:  # generation draws its keys from the train split's
        _save_key_histogram(tokenizer, tokenizer_path, key_shifts["train"])
    if errors:
        shutil.rmtree(staging)
        raise ValueError("could not read files listed in the splits:\n" + "\n".join(errors[:10]))

    replace_dir(staging, tokens_dir)
    seconds = time.perf_counter() - started
    # Tokens per note on the un-augmented splits (train is augmented, so use valid + test).
    plain_tokens = (
        num_tokens["valid"]
        + num_tokens["test"]
        - 2 * (num_documents["valid"] + num_documents["test"])
    )
    plain_notes = num_notes["valid"] + num_notes["test"]
    total_files = sum(len(v) for v in files.values())
    write_json(
        paths.metrics_path("tokenize"),
        {
            "tokenizer": settings.tokenizer,
            "vocab_size": len(tokenizer),
            "dtype": np.dtype(dtype).name,
            "num_tokens": num_tokens,
            "num_documents": num_documents,
            "tokens_per_note": round(plain_tokens / plain_notes, 4) if plain_notes else None,
            "files_per_second": round(total_files / seconds, 2),
            "skipped_transpositions": skipped,
            **(
                {"key_shifts_train": _counts(key_shifts["train"])} if settings.key_normalize else {}
            ),
            "seconds": round(seconds, 2),
        },
    )
    return TokenizeResult(len(tokenizer), num_tokens, num_documents, seconds)
