"""One sampling default (params.yaml `sampling`), chosen on the valid split by the strongest
probe (`cadenza tune-sampling`), read by generate, serving, evaluation and listening."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from cadenza.cli import app
from cadenza.config import ParamsError, parse_settings
from cadenza.evaluation import tuning
from cadenza.sampling import Sampling


def test_old_sampling_keys_say_where_they_moved():
    with pytest.raises(ParamsError, match=r"'evaluate.top_p' has moved .* sampling.top_p"):
        parse_settings({"evaluate": {"top_p": 0.9}})
    with pytest.raises(ParamsError, match=r"'listen.temperature' has moved"):
        parse_settings({"listen": {"temperature": 0.9}})
    settings = parse_settings({"sampling": {"temperature": 0.8, "top_k": 5}})
    assert settings.evaluate.sampling == settings.listen.sampling == settings.sampling
    copied = settings.evaluate.model_copy(update={"num_samples": 8})
    assert copied.sampling.temperature == 0.8 and copied.num_samples == 8
    with pytest.raises(ParamsError, match=r"sampling.top_p = 1.5 is not allowed"):
        parse_settings({"sampling": {"top_p": 1.5}})


def test_grid_puts_plain_sampling_first_and_refuses_bad_values():
    settings = tuning.grid([0.9, 1.0], [0], [0.95, 1.0])
    assert settings[0] == Sampling(1.0, 0, 1.0)
    assert len(settings) == len(set(settings)) == 4
    with pytest.raises(ValueError, match="top_p 1.5"):
        tuning.grid([1.0], [0], [1.5])


def test_choice_keeps_plain_sampling_unless_a_setting_wins_on_evidence():
    def row(name, accuracy, difference=None, p=None):
        versus = None if difference is None else {"difference": difference, "p_value": p}
        return {"name": name, "accuracy": accuracy, "vs_plain": versus}

    plain = row("plain", 0.99)
    assert tuning.choose([plain, row("cool", 0.97, -0.02, 0.20)])["name"] == "plain"
    assert tuning.choose([plain, row("hot", 1.0, +0.01, 0.01)])["name"] == "plain"
    winners = [plain, row("a", 0.90, -0.09, 0.01), row("b", 0.85, -0.14, 0.04)]
    assert tuning.choose(winners)["name"] == "b"
    assert tuning.choose(winners, alpha=0.02)["name"] == "a"


def test_apply_rewrites_only_the_sampling_section_and_keeps_comments(tmp_path):
    params = tmp_path / "params.yaml"
    text = (
        "evaluate:\n  temperature_note: 1  # not this one\n  seed: 0\n"
        "sampling:   # the default\n  temperature: 1.0  # chosen on valid\n  top_k: 0\n"
        "  top_p: 1.0\n  grammar: false\n  pitch_top_p: 1.0  # pitches only\nlisten:\n  seed: 0\n"
    )
    params.write_text(text)
    tuning.apply(params, {"temperature": 0.85, "top_k": 0, "top_p": 0.9, "grammar": True,
                          "pitch_top_p": 0.8})  # fmt: skip
    written = params.read_text()
    assert "temperature: 0.85  # chosen on valid" in written and "top_p: 0.9\n" in written
    assert "pitch_top_p: 0.8  # pitches only" in written
    assert yaml.safe_load(written)["sampling"]["grammar"] is True
    # a params.yaml from before the option: off needs no line, a pitch nucleus does
    old = tmp_path / "old.yaml"
    old.write_text(text.replace("  pitch_top_p: 1.0  # pitches only\n", ""))
    tuning.apply(old, {"temperature": 1, "top_k": 0, "top_p": 1, "grammar": False,
                       "pitch_top_p": 1.0})  # fmt: skip
    with pytest.raises(ValueError, match="no `sampling.pitch_top_p`"):
        tuning.apply(old, {"temperature": 1, "top_k": 0, "top_p": 1, "grammar": False,
                           "pitch_top_p": 0.8})  # fmt: skip
    assert yaml.safe_load(written)["evaluate"] == {"temperature_note": 1, "seed": 0}
    (tmp_path / "bare.yaml").write_text("evaluate:\n  seed: 0\n")
    with pytest.raises(ValueError, match="no `sampling.temperature`"):
        tuning.apply(tmp_path / "bare.yaml", {"temperature": 1, "top_k": 0, "top_p": 1,
                                              "grammar": False})  # fmt: skip


def test_tune_sampling_scores_settings_on_valid_and_applies_the_best(registered_project, tmp_path):
    """The real command on a real project's generator: every setting against plain sampling
    on valid windows, paired; the chosen one lands in params.yaml."""
    repo = registered_project["repo"]
    root = tmp_path / "project"
    for part in ("data/tokens", "models/generator-mle", "models/discriminator"):
        shutil.copytree(repo / part, root / part)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["num_bins"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = CliRunner().invoke(
        app,
        ["tune-sampling", "--root", str(root), "--params", str(root / "params.yaml"),
         "--temperatures", "0.5", "--top-ps", "1.0", "--grammars", "1", "--samples", "8",
         "--pitch-top-ps", "1.0,0.5", "--bootstrap", "10",
         "--apply"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sweep = json.loads((root / "reports" / "sampling" / "sweep.json").read_text())
    assert sweep["split"] == "valid" and sweep["num_windows"] == 8
    plain, cooler, pitch = sweep["rows"]
    assert (plain["temperature"], plain["top_p"]) == (1.0, 1.0) and "vs_plain" not in plain
    assert pitch["pitch_top_p"] == 0.5 and cooler["pitch_top_p"] == 1.0
    assert pitch["name"] == "T=0.5 k=0 p=1 pitch-p=0.5 +grammar" and "vs_plain" in pitch
    pair = cooler["vs_plain"]
    assert pair["difference"] == pytest.approx(cooler["probes"][pair["probe"]] - plain["probes"][
        pair["probe"]])  # fmt: skip
    assert pair["ci_low"] <= pair["difference"] <= pair["ci_high"]
    best = tuning.choose(sweep["rows"])  # the rule itself is tested above
    assert sweep["chosen"]["temperature"] == best["temperature"]
    chosen = parse_settings(yaml.safe_load((root / "params.yaml").read_text())).sampling
    assert chosen.temperature == best["temperature"] and chosen.top_p == best["top_p"]
    assert chosen.grammar == best["grammar"] and cooler["grammar"] is True
    assert chosen.pitch_top_p == best["pitch_top_p"]
    assert "| T=1 k=0 p=1 |" in (root / "reports" / "sampling" / "sweep.md").read_text()


def test_generate_takes_sampling_from_params_and_the_model(registered_project, tmp_path):
    """No sampling options: params.yaml's `sampling` for a plain folder; a model folder that
    carries sampling.json (a registered model) wins over params; an option wins over both."""
    repo = registered_project["repo"]
    model = tmp_path / "model"
    shutil.copytree(repo / "models" / "generator-mle", model)
    params = tmp_path / "params.yaml"

    def run(*extra: str, sampling: dict) -> bytes:
        params.write_text(yaml.safe_dump({"sampling": sampling}))
        out = tmp_path / "out.mid"
        result = CliRunner().invoke(
            app,
            ["generate", "--model", str(model), "-n", "48", "-o", str(out), "--params",
             str(params), "--seed", "3", *extra],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return out.read_bytes()

    cool = {"temperature": 0.3, "top_k": 0, "top_p": 1.0}
    by_params = run(sampling=cool)
    assert by_params == run("--temperature", "0.3", sampling={})
    trimmed = run(sampling={"pitch_top_p": 0.2})
    assert trimmed == run("--pitch-top-p", "0.2", sampling={}) != run(sampling={})
    (model / "sampling.json").write_text(json.dumps(cool))
    assert run(sampling={"temperature": 2.0}) == by_params  # the model's own default wins


def test_compare_finds_no_difference_between_a_generator_and_itself(registered_project, tmp_path):
    repo = registered_project["repo"]
    out = tmp_path / "compare.json"
    mle = str(repo / "models" / "generator-mle")
    result = CliRunner().invoke(
        app, ["compare", mle, mle, "--root", str(repo), "--params", str(repo / "params.yaml"),
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    same = json.loads(out.read_text())
    assert same["comparison"]["difference"] == 0.0
    assert same["comparison"]["ci_low"] == same["comparison"]["ci_high"] == 0.0
    a, b = same["models"]["a"], same["models"]["b"]
    assert a["test_nll"] == b["test_nll"] and a["probes"] == b["probes"]
    ratio = same["test_nll_ratio"]  # paired over documents: exactly none
    assert ratio["ratio"] == ratio["ci_low"] == ratio["ci_high"] == 1.0 and ratio["p_value"] == 1
    assert "test nats a / b: 1.0000 [1.0000, 1.0000]" in result.output
    bad = CliRunner().invoke(app, ["compare", mle, str(tmp_path), "--root", str(repo),
                                   "--params", str(repo / "params.yaml")])  # fmt: skip
    assert bad.exit_code == 1 and "a Cadenza checkpoint" in bad.output, bad.output


def test_grammar_holds_for_real_tokens_and_masks_what_a_model_would_break(token_project):
    """Every real sequence obeys the REMI grammar; an untrained model breaks it on its own
    and never does under the mask, in both samplers (generate and the evaluation's)."""
    import numpy as np
    import torch

    from cadenza.evaluation import windows
    from cadenza.models.generator import GeneratorConfig, TransformerXL
    from cadenza.tokens.grammar import build_grammar
    from cadenza.tokens.store import load_split
    from cadenza.tokens.tokenizer import build_tokenizer, load_tokenizer

    tokenizer = load_tokenizer(token_project / "data" / "tokens" / "tokenizer.json")
    grammar = build_grammar(tokenizer)
    for split in ("train", "valid", "test"):
        tokens, offsets = load_split(token_project / "data" / "tokens", split)
        for lo, hi in zip(offsets[:-1], offsets[1:], strict=True):
            row = torch.from_numpy(np.asarray(tokens[lo:hi]).astype(np.int64))[None]
            assert int(grammar.violations(row)[0]) == 0, (split, lo)
    torch.manual_seed(0)
    config = GeneratorConfig(vocab_size=len(tokenizer.vocab), d_model=32, n_layers=1,
                             n_heads=2, d_ff=64, seg_len=16, mem_len=16)  # fmt: skip
    net = TransformerXL(config).eval()
    bos = torch.full((4, 1), tokenizer["BOS_None"])
    free = net.generate(bos, 96, generator=torch.Generator().manual_seed(1))
    masked = net.generate(bos, 96, generator=torch.Generator().manual_seed(1), grammar=grammar)
    assert grammar.violations(free).sum() > 0
    assert grammar.violations(masked).sum() == 0
    plan = windows.make_plan(4, 96, 32, 2, 0)
    samples = windows.generate_samples(net, tokenizer, plan, Sampling(grammar=True), 0, "cpu", 4)
    rows = torch.from_numpy(np.concatenate([bos.numpy(), samples], axis=1).astype(np.int64))
    assert grammar.violations(rows).sum() == 0
    assert build_grammar(build_tokenizer("TSD", 8, (21, 109), 8)) is None


def test_pitch_nucleus_holds_in_both_samplers(token_project):
    """With pitch_top_p, every pitch an untrained model draws lies inside the pitch nucleus of
    its own next-token distribution at that step (teacher-forced logits), in generate and in
    the evaluation's sampler; without it, pitches outside come up."""
    import numpy as np
    import torch

    from cadenza.evaluation import windows
    from cadenza.models.generator import GeneratorConfig, TransformerXL
    from cadenza.tokens.grammar import pitch_mask
    from cadenza.tokens.tokenizer import build_tokenizer, load_tokenizer

    tokenizer = load_tokenizer(token_project / "data" / "tokens" / "tokenizer.json")
    pitches = pitch_mask(tokenizer)
    names = {i: t for t, i in tokenizer.vocab.items()}
    assert {names[i].split("_")[0] for i in pitches.nonzero()[:, 0].tolist()} == {"Pitch"}
    assert int(pitches.sum()) == sum(t.startswith("Pitch_") for t in tokenizer.vocab)
    midilike = build_tokenizer("MIDILike", 8, (21, 109), 8)
    assert int(pitch_mask(midilike).sum()) == sum(t.startswith("NoteOn_") for t in midilike.vocab)
    torch.manual_seed(0)
    config = GeneratorConfig(vocab_size=len(tokenizer.vocab), d_model=32, n_layers=1,
                             n_heads=2, d_ff=64, seg_len=16, mem_len=16)  # fmt: skip
    net = TransformerXL(config).eval()
    with torch.no_grad():
        for p in net.parameters():  # a peaked pitch distribution, as a trained model's
            p.mul_(8.0)

    def outside(rows: torch.Tensor, q: float = 0.5) -> int:
        """Pitch tokens drawn outside the q-nucleus of the pitch tokens at their step."""
        with torch.no_grad():
            logits, _ = net(rows[:, :-1])
        step = logits.reshape(-1, logits.shape[-1]).float()
        from cadenza.models.sampling import filter_logits

        kept = ~torch.isinf(filter_logits(step, pitch_mask=pitches, pitch_top_p=q))
        drawn = rows[:, 1:].reshape(-1)
        is_pitch = pitches[drawn]
        return int((is_pitch & ~kept[torch.arange(len(drawn)), drawn]).sum())

    bos = torch.full((8, 1), tokenizer["BOS_None"])
    free = net.generate(bos, 96, generator=torch.Generator().manual_seed(1))
    trimmed = net.generate(bos, 96, generator=torch.Generator().manual_seed(1),
                           pitch_mask=pitches, pitch_top_p=0.5)  # fmt: skip
    assert outside(free) > 0 and outside(trimmed) == 0
    plan = windows.make_plan(8, 96, 32, 2, 0)
    samples = windows.generate_samples(net, tokenizer, plan, Sampling(pitch_top_p=0.5), 0, "cpu",
                                       8)  # fmt: skip
    rows = torch.from_numpy(np.concatenate([bos.numpy(), samples], axis=1).astype(np.int64))
    assert outside(rows) == 0


def test_compare_reads_a_generator_of_another_tokenizer_in_the_pipelines_tokens(
    registered_project, chorale_dir, tmp_path
):
    """Real chorales re-encoded between a tokenizer with Velocity tokens and one without are
    the ids the other tokenizer writes for them, both ways (the corpus' most common
    velocity given back); `compare` takes a generator whose tokenizer differs from the
    pipeline's in exactly that: its samples are read in the pipeline's tokens and its NLL is
    given per token of its own and per note, where an untrained model is worse."""
    import numpy as np
    import torch
    from symusic import Score

    from cadenza.generate import load_generator
    from cadenza.models.generator import GeneratorConfig, TransformerXL
    from cadenza.tokens.encode import modal_velocity, retokenize, score_ids
    from cadenza.tokens.tokenizer import build_tokenizer, uses_voice_programs
    from cadenza.training.checkpoint import read_config, save_weights

    repo = registered_project["repo"]
    mle = repo / "models" / "generator-mle"
    _, reference = load_generator(mle)
    shape = ((21, 109), 8, uses_voice_programs(reference))
    with_velocity, without = build_tokenizer("REMI", 8, *shape), build_tokenizer("REMI", 0, *shape)
    for path in sorted(chorale_dir.glob("*.mid"))[:2]:
        score = Score(str(path))
        ids, plain = score_ids(with_velocity, score), score_ids(without, score)
        assert len(ids) - len(plain) == score.note_num()
        assert retokenize(ids, with_velocity, without) == plain
        velocity = modal_velocity(with_velocity, np.asarray(ids))
        assert retokenize(plain, without, with_velocity, velocity) == ids

    other = without if reference.config.use_velocities else with_velocity
    assert other.vocab != reference.vocab
    foreign = tmp_path / "foreign"
    config = read_config(mle)
    config["model"]["vocab_size"] = len(other)
    torch.manual_seed(0)
    save_weights(TransformerXL(GeneratorConfig(**config["model"])), config, foreign)
    other.save(foreign / "tokenizer.json")
    out = tmp_path / "compare.json"
    result = CliRunner().invoke(
        app, ["compare", str(foreign), str(mle), "--root", str(repo), "--params",
              str(repo / "params.yaml"), "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    models = json.loads(out.read_text())["models"]
    assert models["a"]["tokenizer"] == "re-encoded" and models["b"]["tokenizer"] == "own"
    assert models["a"]["test_nll_per_note"] > models["b"]["test_nll_per_note"] > 0
    assert models["a"]["test_nll"] > 0.5 * np.log(len(other))  # untrained: near uniform
    ratio = json.loads(out.read_text())["test_nll_ratio"]  # the untrained model: worse
    assert ratio["ratio"] > 1 and ratio["ci_low"] > 1  # (too few test documents here for a
    # p-value to show it; test_instrument's simulation checks the p-value and the interval)
