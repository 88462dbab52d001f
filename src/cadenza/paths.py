"""Every path the pipeline reads or writes, defined in one place (relative to the project root)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BASE_RECORD = "base.json"
"""Written into the target's model folder by a pretraining that started from the base model
(stages/transfer.py): which base it started from (and that base's lineage), read back by
`evaluate` into the target's lineage."""
LINEAGE = "lineage.json"
"""Written into models/generator-base/ by the base pretrain stage: the base corpus."""


@dataclass(frozen=True)
class Paths:
    """scope "" is the target pipeline; scope "base" is the base pipeline (a mixed corpus
    pretrained for transfer), whose files sit beside the target's under names of their own:
    data/interim/base/, data/tokens-base/, models/generator-base/, metrics/base/,
    reports/base/. Raw corpora share data/raw/ (each corpus has its own folder)."""

    root: Path
    corpus: str = "bach"
    scope: str = ""

    def _scoped(self, parent: Path, name: str) -> Path:
        return parent / (f"{name}-{self.scope}" if self.scope else name)

    @property
    def raw_dir(self) -> Path:
        """Immutable imported corpus: MIDI files plus metadata.csv."""
        return self.root / "data" / "raw" / self.corpus

    @property
    def metadata_path(self) -> Path:
        return self.raw_dir / "metadata.csv"

    @property
    def interim_dir(self) -> Path:
        interim = self.root / "data" / "interim"
        return interim / self.scope if self.scope else interim

    @property
    def manifest_path(self) -> Path:
        return self.interim_dir / "manifest.parquet"

    @property
    def quarantine_path(self) -> Path:
        return self.interim_dir / "quarantine.csv"

    @property
    def splits_path(self) -> Path:
        return self.interim_dir / "splits.csv"

    @property
    def validation_report_dir(self) -> Path:
        return self.reports_dir / "validation"

    @property
    def tokens_dir(self) -> Path:
        """tokenizer.json plus per-split token arrays and document offsets."""
        return self._scoped(self.root / "data", "tokens")

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def generator_mle_dir(self) -> Path:
        """Pretrained generator: best weights, config.json, last/ resumable state
        (models/generator-base/ in the base scope)."""
        return self.models_dir / ("generator-" + (self.scope or "mle"))

    @property
    def base_model_dir(self) -> Path:
        """The base model a target pipeline with pretrain.init = base starts from."""
        return self.models_dir / "generator-base"

    @property
    def reports_dir(self) -> Path:
        reports = self.root / "reports"
        return reports / self.scope if self.scope else reports

    @property
    def discriminator_dir(self) -> Path:
        """SpanBERT-pretrained discriminator: model.safetensors + config.json."""
        return self.models_dir / "discriminator"

    @property
    def generator_gan_dir(self) -> Path:
        """Adversarially fine-tuned generator (same layout as generator-mle)."""
        return self.models_dir / "generator-gan"

    @property
    def generator_control_dir(self) -> Path:
        """The adversarial stage's likelihood-only control arm (adv_weight 0, same steps)."""
        return self.models_dir / "generator-control"

    @property
    def metrics_dir(self) -> Path:
        metrics = self.root / "metrics"
        return metrics / self.scope if self.scope else metrics

    def metrics_path(self, stage: str) -> Path:
        return self.metrics_dir / f"{stage}.json"

    @property
    def dvc_lock_path(self) -> Path:
        """The lock file of this scope's stages (base/dvc.lock for the base pipeline)."""
        return self.root / self.scope / "dvc.lock" if self.scope else self.root / "dvc.lock"

    def stage_name(self, stage: str) -> str:
        """A stage's name in dvc.yaml: base_<stage> in the base pipeline."""
        return f"{self.scope}_{stage}" if self.scope else stage

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def resolve(self, path: str | Path) -> Path:
        """A params path: absolute as given, otherwise relative to the project root."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.root / path
