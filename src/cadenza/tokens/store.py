"""The token store on disk: what `tokenize` writes under data/tokens/ and training reads.

For each split: `<split>.npy` (all documents concatenated; uint16 when the vocabulary fits),
`<split>_offsets.npy` (int64 document start positions plus the total length), for the
augmented train split `<split>_original.npy` (which documents are a file as written), and
with key normalization `<split>_key_shift.npy` (the semitones each document was moved by).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


def key_shifts_path(tokens_dir: Path, split: str) -> Path:
    """Semitones each document of the split was moved by (int8 per document)."""
    return tokens_dir / f"{split}_key_shift.npy"


def load_key_shifts(tokens_dir: Path, split: str) -> np.ndarray | None:
    """(documents,) semitones each document of a split was moved by, or None when the
    tokens were not key-normalized."""
    path = key_shifts_path(tokens_dir, split)
    return np.load(path).astype(np.int64) if path.is_file() else None


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


def write_split(tokens_dir: Path, split: str, encoded, dtype) -> SplitSummary:
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
