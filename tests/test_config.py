"""Settings: params.yaml is validated once; bad values name the key, the value and the rule."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cadenza.config import ParamsError, load_settings, parse_settings

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_project_params_are_valid_and_match_defaults():
    settings = load_settings(PROJECT_PARAMS)
    assert settings.import_.corpus == "bach" and settings.import_.source == "music21"
    assert settings.split.train + settings.split.valid + settings.split.test == pytest.approx(1)
    defaults = parse_settings({})
    for section in ("import_", "validate_", "split", "tokenize"):  # spelled out in params.yaml
        assert getattr(settings, section) == getattr(defaults, section)
    assert set(settings.pretrain.presets) == {"tiny", "cpu", "cpu-long", "cpu-xl", "gpu"}
    long, cpu = settings.pretrain.presets["cpu-long"], settings.pretrain.presets["cpu"]
    xl = settings.pretrain.presets["cpu-xl"]
    assert long.max_steps == 2.5 * cpu.max_steps  # the same model, 2.5x the budget
    assert xl.max_steps == 6 * long.max_steps  # and 15x
    assert settings.pretrain.optimizer == "muon"
    for preset in (long, xl):
        same = replace(preset, max_steps=cpu.max_steps, eval_interval=cpu.eval_interval)
        assert same == cpu
    assert settings.pretrain.selected == settings.pretrain.presets["cpu-long"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"validate": {"min_notse": 3}}, "unknown key 'validate.min_notse'"),
        ({"tokenise": {}}, "unknown key 'tokenise'"),
        ({"validate": {"max_file_bytes": "big"}}, "validate.max_file_bytes = 'big' is not allowed"),
        (
            {"validate": {"max_bad_fraction": 1.5}},
            "validate.max_bad_fraction = 1.5 is not allowed: "
            "Input should be less than or equal to 1",
        ),
        (
            {"import": {"source": "napster"}},
            "import.source = 'napster' is not allowed: Input should be 'music21', 'folder'",
        ),
        ({"import": {"corpus": "../etc"}}, "import.corpus = '../etc' is not allowed"),
        ({"split": {"train": 0.5}}, "train + valid + test must sum to 1"),
        (
            {"validate": {"min_notes": 10, "max_notes": 5}},
            "min_notes (10) must be <= max_notes (5)",
        ),
    ],
)
def test_bad_values_are_named(raw, expected):
    with pytest.raises(ParamsError) as error:
        parse_settings(raw)
    assert expected in str(error.value)


def test_unknown_preset_lists_the_known_ones():
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    raw["pretrain"]["preset"] = "huge"
    known = r"\['cpu', 'cpu-long', 'cpu-xl', 'gpu', 'tiny'\]"
    with pytest.raises(ParamsError, match=rf"preset 'huge' is not one of {known}"):
        parse_settings(raw)
    raw["pretrain"]["preset"] = "tiny"
    raw["pretrain"]["presets"] = {"tiny": {"n_heads": 3}}  # over the code's tiny preset
    with pytest.raises(ParamsError, match="pretrain.presets.tiny"):
        parse_settings(raw)


def test_every_bad_key_is_reported_at_once():
    with pytest.raises(ParamsError) as error:
        parse_settings({"import": {"limit": -1}, "split": {"seed": "x"}})
    assert "import.limit = -1" in str(error.value) and "split.seed = 'x'" in str(error.value)


def test_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("import: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_settings(bad)
    bad.write_text(yaml.safe_dump(["a", "list"]))
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_settings(bad)


def test_loop_sections_name_each_bad_key_and_refuse_unknown_and_retired_ones():
    with pytest.raises(ParamsError) as error:
        parse_settings({"adversarial": {"adv_every": 0, "max_steps": 0}})
    assert "params.yaml: adversarial.adv_every = 0 is not allowed: must be >= 1" in str(error.value)
    assert "adversarial.max_steps = 0 is not allowed" in str(error.value)
    with pytest.raises(ParamsError, match="unknown key 'adversarial.loss'"):  # retired
        parse_settings({"adversarial": {"loss": "hinge"}})
    with pytest.raises(
        ParamsError,
        match=r"pretrain_discriminator.span_p = 0.0 is not allowed: must lie in \(0, 1\]",
    ):
        parse_settings({"pretrain_discriminator": {"span_p": 0}})
    with pytest.raises(ParamsError, match="pretrain.presets.tiny"):
        parse_settings({"pretrain": {"presets": {"tiny": {"lr": 2.0}}}})
    with pytest.raises(
        ParamsError,
        match=r"pretrain.presets.cpu-long.attn_dropout = 1.5 is not allowed: must lie in \[0, 1\)",
    ):
        parse_settings({"pretrain": {"presets": {"cpu-long": {"attn_dropout": 1.5}}}})


def test_a_preset_field_in_params_overrides_the_code_preset_and_reaches_the_loop():
    settings = parse_settings(
        {"pretrain": {"preset": "cpu", "presets": {"cpu": {"max_steps": 10}}}}
    )
    cpu, code = settings.pretrain.selected, parse_settings({}).pretrain.presets["cpu"]
    assert cpu == replace(code, max_steps=10)
    train = settings.pretrain.train_config()
    assert (train.max_steps, train.lr, train.final_original_steps) == (10, code.lr, 2)


def test_the_loops_read_the_section_values_with_no_second_default():
    from cadenza.training.config import AdversarialConfig, MaskedLMConfig

    settings = parse_settings({"adversarial": {"chunk_len": 32}})
    assert settings.adversarial.loop_config() == AdversarialConfig(chunk_len=32)
    assert isinstance(settings.pretrain_discriminator, MaskedLMConfig)
    assert settings.pretrain_discriminator.seq_len == MaskedLMConfig().seq_len == 64
