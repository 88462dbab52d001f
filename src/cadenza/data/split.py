"""`split` stage: deterministic train/valid/test assignment, grouped so nothing leaks.

Each group (a piece and its variants, or a whole composer) is placed by a hash of
(seed, group key) mapped to [0, 1) and cut at the params fractions. The assignment of a group
depends on nothing else, so adding files never moves the files already assigned, and the same
corpus and params always give the same split. Official splits (MAESTRO, NES-MDB) win when
`use_official` is set.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import pandas as pd

from cadenza.config import SplitSettings
from cadenza.io import atomic_path, write_json
from cadenza.paths import Paths

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SPLIT_COLUMNS = ["path", "split", "group", "piece", "composer", "sha256"]


@dataclass
class SplitResult:
    num_files: dict[str, int]
    num_groups: dict[str, int]


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


def run(settings: SplitSettings, paths: Paths) -> SplitResult:
    if not paths.manifest_path.is_file():
        raise FileNotFoundError(f"{paths.manifest_path}: no manifest; run `cadenza validate` first")
    splits = split_manifest(pd.read_parquet(paths.manifest_path), settings)
    leaks = splits.groupby("group")["split"].nunique()
    if (leaks > 1).any() and not settings.use_official:
        raise AssertionError(f"groups straddle splits: {list(leaks[leaks > 1].index[:5])}")
    with atomic_path(paths.splits_path) as tmp:
        splits.to_csv(tmp, index=False)

    result = SplitResult(
        num_files={s: int((splits["split"] == s).sum()) for s in SPLITS},
        num_groups={s: int(splits.loc[splits["split"] == s, "group"].nunique()) for s in SPLITS},
    )
    for name, count in result.num_files.items():
        if count == 0:
            log.warning(
                "split %r is empty (%d files in all); a larger corpus fills it", name, len(splits)
            )
    write_json(
        paths.metrics_path("split"),
        {"num_files": result.num_files, "num_groups": result.num_groups},
    )
    return result
