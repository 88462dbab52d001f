"""`split` stage: write data/interim/splits.csv from the manifest, and metrics/split.json.

The assignment itself (data/split.py) places each group of files by a hash of its key, so
no piece (or composer) straddles train, valid and test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from cadenza.config import SplitSettings
from cadenza.data.split import SPLITS, split_manifest
from cadenza.io import atomic_path, write_json
from cadenza.paths import Paths

log = logging.getLogger(__name__)


@dataclass
class SplitResult:
    num_files: dict[str, int]
    num_groups: dict[str, int]


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
