"""What each stage's metrics say, in a line: read from metrics/<stage>.json, so the stage
command, `cadenza summary`, the pipeline and the retrain flow's artifact all say the same.

Each function takes the stage's metrics dict and returns rows of (label, text); a stage with
one row labels it with its own name. Pure formatting: no I/O, no heavy imports.
"""

from __future__ import annotations

Row = tuple[str, str]
ARMS = ("mle", "gan", "control")  # the generators the evaluation compares, in report order


def import_summary(m: dict) -> list[Row]:
    return [
        (
            "import",
            f"imported {m['num_files']} files ({m['num_failed']} failed to convert) in "
            f"{m['seconds']:.1f} s, {m['files_per_second']:.1f} files/s with "
            f"{m['num_workers']} workers",
        )
    ]


def validate_summary(m: dict) -> list[Row]:
    reasons = ", ".join(f"{k}: {v}" for k, v in m["quarantine_reasons"].items())
    return [
        (
            "validate",
            f"{m['num_files']} files: {m['num_ok']} usable, {m['num_quarantined']} quarantined"
            f"{f' ({reasons})' if reasons else ''}, {m['num_duplicates']} exact duplicates "
            f"kept once; suite {'passed' if m['suite_success'] else 'FAILED'}",
        )
    ]


def split_summary(m: dict) -> list[Row]:
    counts = ", ".join(
        f"{name} {n} files / {m['num_groups'][name]} groups" for name, n in m["num_files"].items()
    )
    return [("split", counts)]


def tokenize_summary(m: dict) -> list[Row]:
    counts = ", ".join(
        f"{s} {n:,} tokens / {m['num_documents'][s]} docs" for s, n in m["num_tokens"].items()
    )
    return [("tokenize", f"{m['tokenizer']}, vocabulary {m['vocab_size']}; {counts}")]


def pretrain_summary(m: dict) -> list[Row]:
    baselines = ", ".join(
        f"{k.removeprefix('baseline_').removesuffix('_test_nll')} {v:.4f}"
        for k, v in m.items()
        if k.startswith("baseline_")
    )
    return [
        (
            "pretrain",
            f"test NLL {m['test_nll']:.4f} nats/token (baselines: {baselines}); "
            f"{m['num_parameters']:,} parameters, {m['train_seconds']:.0f} s, "
            f"{m['tokens_per_second']:,.0f} tokens/s",
        )
    ]


def discriminator_summary(m: dict) -> list[Row]:
    return [
        (
            "pretrain_discriminator",
            f"SpanBERT MLM accuracy {m['valid_mlm_accuracy']:.3f} (loss "
            f"{m['valid_mlm_loss']:.4f}); {m['num_parameters']:,} parameters, "
            f"{m['seconds']:.0f} s",
        )
    ]


def adversarial_summary(m: dict) -> list[Row]:
    critic = m["discriminator_accuracy"]  # None: an arm without the SpanBERT critic
    critic = "no SpanBERT critic" if critic is None else f"{critic:.2f}"
    return [
        (
            "adversarial",
            f"valid NLL {m['initial_valid_nll']:.4f} -> best {m['best_valid_nll']:.4f} (final "
            f"{m['final_valid_nll']:.4f}, {m['rollbacks']} rollbacks); held-out discriminator "
            f"accuracy {critic}; {m['seconds']:.0f} s; selected step "
            f"{m['selected_step']}, control arm step {m['control']['selection']['step']}",
        )
    ]


def evaluation_line(m: dict) -> str:
    """One generator's headline numbers (0.5 accuracy: indistinguishable from real)."""
    frechet = "n/a" if m["frechet_distance"] is None else f"{m['frechet_distance']:.3f}"
    return (
        f"test NLL {m['test_nll']:.4f}, discriminative accuracy "
        f"{m['discriminative_accuracy']:.3f} [{m['discriminative_accuracy_ci_low']:.3f}, "
        f"{m['discriminative_accuracy_ci_high']:.3f}], AUC {m['discriminative_auc']:.3f}, "
        f"mean overlap {m['mean_overlap']:.3f}, Frechet {frechet}"
    )


def evaluate_summary(m: dict) -> list[Row]:
    return [
        (
            f"evaluate {name}",
            evaluation_line(m[name]) + (" <- candidate" if m["candidate"] == name else ""),
        )
        for name in ARMS
        if name in m
    ]


def register_summary(m: dict) -> list[Row]:
    name, version = m["model_name"], m["version"]
    if not version:  # a DVC experiment: nothing registered
        return [("register", m["reason"])]
    if not m["new_version"]:
        return [("register", f"nothing changed: {name} version {version} ({m['reason']})")]
    verdict = "promoted to champion" if m["promoted"] else "not promoted"
    return [
        (
            "register",
            f"registered {name} version {version}: {verdict} ({m['reason']}); champion is "
            f"version {m['champion']}",
        )
    ]
