"""split: deterministic, grouped, stable when files are added, official splits honoured."""

from __future__ import annotations

import pandas as pd
import pytest

from cadenza.config import SplitSettings
from cadenza.data.split import split_manifest


def _manifest(
    num_pieces: int, variants: int = 2, composer_of=lambda i: f"c{i % 7}"
) -> pd.DataFrame:
    rows = [
        {
            "path": f"p{i:04d}_v{v}.mid",
            "status": "ok",
            "piece": f"p{i:04d}",
            "composer": composer_of(i),
            "official_split": "",
            "sha256": f"{i:032d}{v:032d}",
        }
        for i in range(num_pieces)
        for v in range(variants)
    ]
    rows.append({**rows[0], "path": "bad.mid", "status": "quarantined"})
    rows.append({**rows[0], "path": "dup.mid", "status": "duplicate"})
    return pd.DataFrame(rows)


def test_split_is_deterministic_grouped_and_near_the_fractions():
    manifest = _manifest(2000)
    settings = SplitSettings()
    first, second = split_manifest(manifest, settings), split_manifest(manifest, settings)
    pd.testing.assert_frame_equal(first, second)
    assert set(first["path"]) == set(manifest["path"]) - {"bad.mid", "dup.mid"}
    assert (first.groupby("piece")["split"].nunique() == 1).all()  # variants stay together
    fractions = first.drop_duplicates("piece")["split"].value_counts(normalize=True)
    assert fractions["train"] == pytest.approx(0.8, abs=0.03)
    assert fractions["valid"] == pytest.approx(0.1, abs=0.02)
    assert fractions["test"] == pytest.approx(0.1, abs=0.02)


def test_adding_files_never_moves_assigned_ones():
    settings = SplitSettings(seed=3)
    before = split_manifest(_manifest(300), settings).set_index("path")["split"]
    after = split_manifest(_manifest(600), settings).set_index("path")["split"]
    assert after.loc[before.index].equals(before)


def test_seed_changes_the_assignment():
    manifest = _manifest(300)
    a = split_manifest(manifest, SplitSettings(seed=0))["split"]
    b = split_manifest(manifest, SplitSettings(seed=1))["split"]
    assert (a != b).sum() > 30


def test_group_by_composer_keeps_composers_whole():
    result = split_manifest(_manifest(300), SplitSettings(group_by="composer"))
    assert (result.groupby("composer")["split"].nunique() == 1).all()


def test_official_split_wins_when_asked():
    manifest = _manifest(50)
    manifest.loc[manifest["piece"] == "p0003", "official_split"] = "test"
    manifest.loc[manifest["piece"] == "p0004", "official_split"] = "valid"
    result = split_manifest(manifest, SplitSettings(use_official=True)).set_index("path")
    assert result.loc["p0003_v1.mid", "split"] == "test"
    assert result.loc["p0004_v0.mid", "split"] == "valid"
    ignored = split_manifest(manifest, SplitSettings(use_official=False, seed=5))
    hashed_only = split_manifest(_manifest(50), SplitSettings(use_official=False, seed=5))
    pd.testing.assert_frame_equal(ignored, hashed_only)
