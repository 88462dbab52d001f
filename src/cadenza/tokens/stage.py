"""`tokenize` stage: train/build the tokenizer, encode every split into flat token arrays.

Writes, under data/tokens/: tokenizer.json; for each split `<split>.npy` (all documents
concatenated; uint16 when the vocabulary fits) and `<split>_offsets.npy` (int64, document
start positions plus the total length); and metrics/tokenize.json.
Augmentation (transposition, time stretch) is applied to the train split only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cadenza.config import TokenizeSettings
from cadenza.io import replace_dir, write_json
from cadenza.paths import Paths
from cadenza.progress import progress_bar
from cadenza.tokens.encode import EncodeJob, encode_file, init_worker
from cadenza.tokens.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass
class TokenizeResult:
    vocab_size: int
    num_tokens: dict[str, int]
    num_documents: dict[str, int]
    seconds: float


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def load_split(tokens_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets) of one split, memory-mapped."""
    tokens_path = tokens_dir / f"{split}.npy"
    if not tokens_path.is_file():
        raise FileNotFoundError(f"{tokens_path}: no tokens; run `cadenza tokenize` first")
    return (
        np.load(tokens_path, mmap_mode="r"),
        np.load(tokens_dir / f"{split}_offsets.npy"),
    )


def originals_path(tokens_dir: Path, split: str = "train") -> Path:
    """Which of the split's documents are a file as written (bool per document)."""
    return tokens_dir / f"{split}_original.npy"


def load_originals(tokens_dir: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets) of the split's documents as the corpus wrote them: no transposed or
    time-stretched versions (train is augmented; the other splits never are)."""
    tokens, offsets = load_split(tokens_dir, split)
    flags_path = originals_path(tokens_dir, split)
    if not flags_path.is_file():
        if split != "train":
            return tokens, offsets
        raise FileNotFoundError(
            f"{flags_path}: missing, so the un-augmented train documents are unknown; "
            "run `cadenza tokenize` again (tokens written before session 8 lack it)"
        )
    flags = np.load(flags_path)
    if len(flags) != len(offsets) - 1:
        raise ValueError(
            f"{flags_path}: {len(flags)} flags for {len(offsets) - 1} documents; "
            "run `cadenza tokenize` again"
        )
    keep = np.flatnonzero(flags)
    if len(keep) == 0:
        raise ValueError(f"{flags_path}: no un-augmented documents in the {split} split")
    parts = [np.asarray(tokens[offsets[i] : offsets[i + 1]]) for i in keep]
    lengths = [len(p) for p in parts]
    new_offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    return np.concatenate(parts), new_offsets


def _encode_all(jobs: list[EncodeJob], tokenizer_path: Path, workers: int):
    """EncodedFile per job, in job order, as they come (a generator: nothing piles up)."""
    with progress_bar("tokenize", total=len(jobs)) as advance:
        if workers <= 1:
            init_worker(str(tokenizer_path))
            for job in jobs:
                yield encode_file(job)
                advance()
            return
        with ProcessPoolExecutor(
            workers, initializer=init_worker, initargs=(str(tokenizer_path),)
        ) as pool:
            for encoded in pool.map(encode_file, jobs, chunksize=8):
                yield encoded
                advance()


@dataclass
class SplitSummary:
    num_tokens: int
    num_documents: int
    num_notes: int
    num_skipped: int
    errors: list[str]
    key_shifts: list[int]  # per document: semitones its file was moved by (key_normalize)
    file_key_shifts: list[int]  # per file read
    originals: list[bool]  # per document: the file as written (not an augmented version)


def _write_split(tokens_dir: Path, split: str, encoded, dtype) -> SplitSummary:
    """Stream documents to disk as they are encoded: a raw file first, then the .npy (copied
    in blocks), so memory stays bounded by one file's tokens whatever the corpus size."""
    raw_path = tokens_dir / f".{split}.raw"
    lengths: list[int] = []
    notes, skipped, errors, shifts, file_shifts, originals = 0, 0, [], [], [], []
    with raw_path.open("wb") as raw:
        for item in encoded:
            if item.error:
                errors.append(f"{item.path}: {item.error}")
                continue
            notes += item.num_notes
            skipped += item.num_skipped_transpositions
            file_shifts.append(item.key_shift)
            for doc, original in zip(item.documents, item.originals, strict=True):
                np.asarray(doc, dtype=dtype).tofile(raw)
                lengths.append(len(doc))
                shifts.append(item.key_shift)
                originals.append(original)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    total = int(offsets[-1])
    # into the staging folder: swapped in whole
    if total == 0:  # an empty split: numpy cannot map zero bytes
        raw_path.unlink()
        np.save(tokens_dir / f"{split}.npy", np.zeros(0, dtype=dtype))
        np.save(tokens_dir / f"{split}_offsets.npy", offsets)
        return SplitSummary(0, len(lengths), notes, skipped, errors, shifts, file_shifts, originals)
    flat = np.lib.format.open_memmap(tokens_dir / f"{split}.npy", "w+", dtype, (total,))
    block = 1 << 22
    with raw_path.open("rb") as raw:
        for start in range(0, total, block):
            chunk = np.fromfile(raw, dtype=dtype, count=min(block, total - start))
            flat[start : start + len(chunk)] = chunk
    flat.flush()
    del flat
    raw_path.unlink()
    np.save(tokens_dir / f"{split}_offsets.npy", offsets)
    return SplitSummary(total, len(lengths), notes, skipped, errors, shifts, file_shifts, originals)


def _bpe_training_files(train: list[str], settings: TokenizeSettings, scratch: Path) -> list[Path]:
    """The files BPE learns from: the train files, or with voice_programs their numbered
    copies in scratch (miditok reads the files itself, so it must see what encoding sees)."""
    if not settings.voice_programs:
        return [Path(p) for p in train]
    from symusic import Score

    from cadenza.tokens.encode import number_voices

    copies = []
    for i, path in enumerate(train):
        copy = scratch / f"{i:06d}.mid"
        number_voices(Score(path)).dump_midi(str(copy))
        copies.append(copy)
    return copies


def _counts(shifts: list[int]) -> dict[str, int]:
    """{"-6": n, ..., "5": n}: how many train files were moved by each shift."""
    from cadenza.tokens.keys import SHIFTS, histogram

    return {str(s): n for s, n in zip(SHIFTS.tolist(), histogram(shifts), strict=True)}


def _save_key_histogram(tokenizer, tokenizer_path: Path, train_shifts: list[int]) -> None:
    from cadenza.tokens.keys import KEY_SHIFTS, histogram

    tokenizer.config.additional_params[KEY_SHIFTS] = histogram(train_shifts)
    tokenizer.save(tokenizer_path)


def load_key_shifts(tokens_dir: Path, split: str) -> np.ndarray | None:
    """(documents,) semitones each document of a split was moved by, or None when the
    tokens were not key-normalized."""
    path = tokens_dir / f"{split}_key_shift.npy"
    return np.load(path).astype(np.int64) if path.is_file() else None


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
        summary = _write_split(staging, split, _encode_all(jobs, tokenizer_path, workers), dtype)
        errors += summary.errors
        skipped += summary.num_skipped
        num_notes[split] = summary.num_notes
        num_tokens[split], num_documents[split] = summary.num_tokens, summary.num_documents
        key_shifts[split] = summary.file_key_shifts
        if augment:  # which train documents are the corpus as written (pretrain's final phase)
            np.save(originals_path(staging, split), np.asarray(summary.originals, bool))
        if settings.key_normalize:  # evaluation moves real windows back into their own keys
            np.save(staging / f"{split}_key_shift.npy", np.asarray(summary.key_shifts, np.int8))
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
