"""Deterministic train/valid/test assignment, grouped so nothing leaks.

Each group (a piece and its variants, or a whole composer) is placed by a hash of
(seed, group key) mapped to [0, 1) and cut at the params fractions. The assignment of a group
depends on nothing else, so adding files never moves the files already assigned, and the same
corpus and params always give the same split. Official splits (MAESTRO, NES-MDB) win when
`use_official` is set.
"""

from __future__ import annotations

import hashlib

import pandas as pd

from cadenza.config import SplitSettings

SPLITS = ("train", "valid", "test")
SPLIT_COLUMNS = ["path", "split", "group", "piece", "composer", "sha256"]


def unit_hash(seed: int, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, key) alone."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(settings: SplitSettings, group: str) -> str:
    u = unit_hash(settings.seed, group)
    if u < settings.train:
        return "train"
    if u < settings.train + settings.valid:
        return "valid"
    return "test"


def group_key(row: pd.Series, group_by: str) -> str:
    if group_by == "composer" and row["composer"]:
        return f"composer:{row['composer']}"
    return f"piece:{row['piece']}"


def split_manifest(manifest: pd.DataFrame, settings: SplitSettings) -> pd.DataFrame:
    """Assign each usable file of the manifest to a split."""
    usable = manifest[manifest["status"] == "ok"].copy()
    usable["group"] = [group_key(row, settings.group_by) for _, row in usable.iterrows()]
    official = usable["official_split"].fillna("") if settings.use_official else None
    hashed = usable["group"].map(lambda g: assign_split(settings, g))
    if official is not None:
        usable["split"] = official.where(official.isin(SPLITS), hashed)
    else:
        usable["split"] = hashed
    return usable[SPLIT_COLUMNS].sort_values("path").reset_index(drop=True)
