"""The evaluation report's figures and tables: every probe's accuracy with its CI, the
position-bin curve with error bars, the paired comparisons and the music checks per bin."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

PROBES_PNG = "probes.png"
POSITIONS_PNG = "positions.png"


def _plt():
    import matplotlib  # lazy: slow to import; only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as matplotlib

    return plt


def _error_bars(accuracies, intervals: list[dict]):
    """(2, n) distances from each point down to ci_low and up to ci_high."""
    pairs = zip(accuracies, intervals, strict=True)
    return np.array([[a - v["ci_low"], v["ci_high"] - a] for a, v in pairs]).T


def figures(metrics: dict, models: tuple[str, ...], out_dir: Path) -> list[Path]:
    """probes.png (accuracy per probe and model) and positions.png (accuracy per bin)."""
    plt = _plt()
    probes = list(metrics[models[0]]["probes"])
    fig, ax = plt.subplots(figsize=(6, 3), dpi=90)
    width = 0.8 / len(models)
    for i, name in enumerate(models):
        values = [metrics[name]["probes"][p] for p in probes]
        acc = np.array([v["accuracy"] for v in values])
        err = _error_bars(acc, values)
        ax.bar(np.arange(len(probes)) + i * width, acc, width, yerr=err, capsize=3, label=name)
    ax.axhline(0.5, color="grey", linestyle=":", label="indistinguishable")
    ax.set_xticks(np.arange(len(probes)) + width * (len(models) - 1) / 2, probes)
    ax.set_ylim(0.3, 1.02)
    ax.set_ylabel("real-vs-generated accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / PROBES_PNG)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3), dpi=90)
    for name in models:
        bins = [b for b in metrics[name]["position_bins"] if b["accuracy"] is not None]
        centers = [(b["start"] + b["end"]) / 2 for b in bins]
        acc = np.array([b["accuracy"] for b in bins])
        err = _error_bars(acc, bins)
        ax.errorbar(centers, acc, yerr=err, capsize=3, marker="o",
                    label=f"{name} ({metrics[name]['position_probe']} probe)")  # fmt: skip
    ax.axhline(0.5, color="grey", linestyle=":")
    ax.set_xlabel("token position in the sample (window centre)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.3, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / POSITIONS_PNG)
    plt.close(fig)
    return [out_dir / PROBES_PNG, out_dir / POSITIONS_PNG]


def _table(header: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def html_sections(metrics: dict, models: tuple[str, ...], figs: list[Path], root: Path) -> str:
    parts = ["<h2>Probes (95% CI, cluster bootstrap)</h2>"]
    parts += [f"<p><img style='max-width:640px' src='{f.relative_to(root)}'></p>" for f in figs]
    rows = [
        [key, c["probe"], f"{c['accuracy_a']:.3f}", f"{c['accuracy_b']:.3f}",
         f"{c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]",
         f"{c['p_value']:.3f}"]
        for key, c in metrics["comparisons"].items()
    ]  # fmt: skip
    parts.append("<h2>Paired comparisons (same real windows, same seeds)</h2>")
    parts.append(_table(["pair a_vs_b", "probe", "acc. a", "acc. b", "a - b [95% CI]", "p"], rows))
    rows = [
        [key, probe, f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
         f"{d['p_value']:.3f}"]
        for key, c in metrics["comparisons"].items()
        for probe, d in c.get("by_probe", {}).items()
    ]  # fmt: skip
    parts.append("<h3>Every probe</h3>")
    parts.append(_table(["pair a_vs_b", "probe", "a - b [95% CI]", "p"], rows))
    parts += _voice_leading_section(metrics.get("voice_leading"))
    parts.append("<h2>By position (real windows from the same bins)</h2>")
    for name in models:
        m = metrics[name]
        rows = []
        for b in m["position_bins"]:
            checks = b["music"]
            accuracy = (
                "n/a: " + b.get("note", "") if b["accuracy"] is None
                else f"{b['accuracy']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}]"
            )  # fmt: skip
            rows.append(
                [f"{b['start']}-{b['end']}", accuracy,
                 *(f"{checks[k]['generated']:.3f} / {checks[k]['real']:.3f}" for k in checks)]
            )  # fmt: skip
        checks = list(m["position_bins"][0]["music"])
        parts.append(
            f"<h3>{html.escape(name)}: slope {m['position_slope']:+.3f} per 1,000 tokens "
            f"[{m['position_slope_ci_low']:+.3f}, {m['position_slope_ci_high']:+.3f}]</h3>"
        )
        parts.append(_table(["tokens", "accuracy", *(f"{k} (gen / real)" for k in checks)], rows))
    return "".join(parts)


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _ci(m: dict, key: str) -> str:
    return f"{m[key]:.3f} [{m[key + '_ci_low']:.3f}, {m[key + '_ci_high']:.3f}]"


def summary_table(metrics: dict, models: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """The report's headline table: a row per model (the candidate marked), the real test
    pieces and the count baselines."""
    table = {}
    for name in models:
        m = metrics[name]
        row = {
            "test NLL": f"{m['test_nll']:.4f}",
            "discriminative acc. [95% CI]": _ci(m, "discriminative_accuracy"),
            "strongest probe": m["discriminative_probe"],
        }
        for probe, values in m["probes"].items():
            row[f"{probe} probe"] = (
                f"{values['accuracy']:.3f} [{values['ci_low']:.3f}, {values['ci_high']:.3f}]"
            )
        row.update({
            "mean overlap": _fmt(m["mean_overlap"], ".3f"),
            "Frechet": _fmt(m["frechet_distance"], ".3f"),
            "scale consistency": _fmt(m["scale_consistency_mean"], ".3f"),
            "polyphony": _fmt(m["polyphony_mean"], ".2f"),
        })  # fmt: skip
        table[name + (" (candidate)" if metrics["candidate"] == name else "")] = row
    real = metrics["real"]
    table["real test pieces"] = {
        "scale consistency": _fmt(real.get("scale_consistency_mean"), ".3f"),
        "polyphony": _fmt(real.get("polyphony_mean"), ".2f"),
    }
    for name, value in metrics["baselines"].items():
        table[f"{name} baseline"] = {"test NLL": f"{value:.4f}"}
    return table


def _voice_leading_section(judge: dict | None) -> list[str]:
    """The held-out judge: each model's rule rates beside the real windows', the grader as a
    probe, and the paired comparisons it reads."""
    if not judge:
        return []
    rules = judge["rules"]
    rows = [["real", "", *(f"{judge['real'][r]:.3f}" for r in rules)]]
    for name, m in judge["models"].items():
        rows.append(
            [name, f"{m['accuracy']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]",
             *(f"{m['rates'][r]:.3f}" for r in rules)]
        )  # fmt: skip
    pairs = [
        [key, f"{c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]",
         f"{c['p_value']:.3f}"]
        for key, c in judge.get("comparisons", {}).items()
    ]  # fmt: skip
    return [
        "<h2>Voice leading (a judge no training stage reads)</h2>",
        "<p>Rates of each rule over the windows; the grader's rates as a probe "
        "(real vs generated accuracy, 95% CI).</p>",
        _table(["model", "probe accuracy", *rules], rows),
        _table(["pair a_vs_b", "a - b [95% CI]", "p"], pairs),
    ]
