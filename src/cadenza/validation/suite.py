"""The Great Expectations (1.x) suites over the manifest, and their Data Docs.

Two suites, one per batch:
- `manifest`: every file, the contract of the table itself and the bad-file gate;
- `usable_files`: the files downstream stages will use, with the content bounds from params.
great_expectations takes seconds to import, so it is imported only inside run_suites().
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cadenza.config import ValidateSettings


@dataclass(frozen=True)
class ExpectationOutcome:
    suite: str
    expectation: str
    column: str
    success: bool
    observed: str


@dataclass(frozen=True)
class SuiteOutcome:
    success: bool
    outcomes: list[ExpectationOutcome]
    docs_index: Path

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]


def _manifest_expectations(settings: ValidateSettings, columns: list[str]) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="path"),
        gxe.ExpectColumnValuesToBeUnique(column="path"),
        gxe.ExpectColumnValuesToBeInSet(
            column="status", value_set=["ok", "duplicate", "quarantined"]
        ),
        # The gate: at most max_bad_fraction of the files may be quarantined.
        gxe.ExpectColumnValuesToBeInSet(
            column="status", value_set=["ok", "duplicate"], mostly=1.0 - settings.max_bad_fraction
        ),
    ]


def _usable_expectations(settings: ValidateSettings) -> list:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=settings.min_files),
        gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$"),
        gxe.ExpectColumnValuesToBeUnique(column="sha256"),
        gxe.ExpectColumnValuesToBeInSet(column="parse_ok", value_set=[True]),
        gxe.ExpectColumnValuesToBeBetween(column="min_pitch", min_value=0, max_value=127),
        gxe.ExpectColumnValuesToBeBetween(column="max_pitch", min_value=0, max_value=127),
        gxe.ExpectColumnValuesToBeBetween(
            column="notes", min_value=settings.min_notes, max_value=settings.max_notes
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="duration_seconds",
            min_value=settings.min_duration_seconds,
            max_value=settings.max_duration_seconds,
        ),
        gxe.ExpectColumnValuesToBeBetween(column="ticks_per_quarter", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(
            column="bytes", min_value=1, max_value=settings.max_file_bytes
        ),
    ]


def _observed(result) -> str:
    detail = result.result or {}
    if "observed_value" in detail:
        return str(detail["observed_value"])
    if "unexpected_count" in detail:
        examples = detail.get("partial_unexpected_list") or []
        return f"{detail['unexpected_count']} unexpected (e.g. {examples[:3]})"
    return ""


def run_suites(manifest: pd.DataFrame, settings: ValidateSettings, docs_dir: Path) -> SuiteOutcome:
    """Validate the manifest, write Data Docs HTML under docs_dir, return the outcome."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # INFO floods the log
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name="cadenza",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    source = context.data_sources.add_pandas("cadenza")
    batches = {
        "manifest": (manifest, _manifest_expectations(settings, list(manifest.columns))),
        "usable_files": (manifest[manifest["status"] == "ok"], _usable_expectations(settings)),
    }
    outcomes: list[ExpectationOutcome] = []
    for name, (frame, expectations) in batches.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        for item in result.results:
            config = item.expectation_config
            outcomes.append(
                ExpectationOutcome(
                    suite=name,
                    expectation=config.type,
                    column=str(config.kwargs.get("column", "")),
                    success=bool(item.success),
                    observed=_observed(item),
                )
            )
    context.build_data_docs()
    return SuiteOutcome(
        success=all(o.success for o in outcomes),
        outcomes=outcomes,
        docs_index=docs_dir / "index.html",
    )
