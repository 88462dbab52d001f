"""Every path the pipeline reads or writes, defined in one place (relative to the project root)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path
    corpus: str = "bach"

    @property
    def raw_dir(self) -> Path:
        """Immutable imported corpus: MIDI files plus metadata.csv."""
        return self.root / "data" / "raw" / self.corpus

    @property
    def metadata_path(self) -> Path:
        return self.raw_dir / "metadata.csv"

    @property
    def interim_dir(self) -> Path:
        return self.root / "data" / "interim"

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
        return self.root / "reports" / "validation"

    @property
    def tokens_dir(self) -> Path:
        """tokenizer.json plus per-split token arrays and document offsets."""
        return self.root / "data" / "tokens"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def generator_mle_dir(self) -> Path:
        """Pretrained generator: best weights, config.json, last/ resumable state."""
        return self.models_dir / "generator-mle"

    @property
    def discriminator_dir(self) -> Path:
        """SpanBERT-pretrained discriminator: model.safetensors + config.json."""
        return self.models_dir / "discriminator"

    @property
    def generator_gan_dir(self) -> Path:
        """Adversarially fine-tuned generator (same layout as generator-mle)."""
        return self.models_dir / "generator-gan"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def metrics_path(self, stage: str) -> Path:
        return self.metrics_dir / f"{stage}.json"

    def resolve(self, path: str | Path) -> Path:
        """A params path: absolute as given, otherwise relative to the project root."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.root / path
