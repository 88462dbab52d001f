"""The stage registry is the one list of stages: it must say what dvc.yaml and base/dvc.yaml
say (names, order, commands, params sections, code deps), and the CLI must offer exactly its
stage commands with the options each one takes."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import typer.main
import yaml

from cadenza.cli import app
from cadenza.config import Settings
from cadenza.stages import registry

PROJECT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
BASE = yaml.safe_load((PROJECT / "base" / "dvc.yaml").read_text())["stages"]


def _section_key(attribute: str) -> str:
    """A Settings attribute's key in params.yaml (import_ -> import)."""
    field = Settings.model_fields[attribute]
    return field.alias or attribute


def _params_keys(entry: dict) -> set[str]:
    keys = set()
    for item in entry["params"]:
        names = next(iter(item.values())) if isinstance(item, dict) else [item]
        keys |= {name.split(".")[0] for name in names}
    return keys


def test_stage_order_is_dvc_yaml_order():
    assert registry.names() == tuple(DVC)
    assert registry.names("base") == tuple(BASE)


@pytest.mark.parametrize("stage", registry.STAGES, ids=lambda s: s.name)
def test_each_stage_matches_its_dvc_entry(stage):
    entry = DVC[stage.name]
    assert entry["cmd"] == f"cadenza {stage.command}"
    sections = [name for name in stage.inputs if name not in ("paths", "params")]
    assert {_section_key(name) for name in sections} <= _params_keys(entry)
    module = stage.run.partition(":")[0]
    code = "src/" + module.replace(".", "/") + ".py"
    assert code in entry["deps"], f"{code} missing from dvc.yaml's {stage.name} deps"
    signature = inspect.signature(stage.function())
    assert list(signature.parameters).index("paths") == stage.inputs.index("paths")
    signature.bind(*stage.inputs, **{flag.keyword: False for flag in stage.flags})


@pytest.mark.parametrize("stage", [s for s in registry.STAGES if s.base], ids=lambda s: s.name)
def test_each_base_stage_runs_the_same_command_in_the_base_scope(stage):
    entry = BASE[f"base_{stage.name}"]
    assert entry["cmd"] == f"cadenza {stage.command} --params base/params.yaml --scope base"
    code = "src/" + stage.run.partition(":")[0].replace(".", "/") + ".py"
    assert code in entry["deps"], f"{code} missing from base/dvc.yaml's base_{stage.name} deps"
    assert _section_key(stage.section) in _params_keys(entry)


def test_the_cli_has_one_command_per_stage_with_its_options():
    group = typer.main.get_command(app)
    for stage in registry.STAGES:
        command = group.commands[stage.command]
        options = {opt for param in command.params for opt in param.opts}
        expected = {"--params", "-p", "--root"}
        expected |= {"--scope"} if stage.base else set()
        expected |= {flag.option for flag in stage.flags}
        assert options == expected, stage.name


def test_service_stages_are_the_ones_that_talk_to_the_registry():
    assert registry.service_names() == ("evaluate", "register")
    assert registry.service_names("base") == ("base_register",)
