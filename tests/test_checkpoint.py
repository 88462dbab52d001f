"""Checkpointer: a dict of stateful parts, the global RNG, step, seconds and a loop's values
round-trip through last/; a state of other settings or format is never half-loaded."""

from __future__ import annotations

import numpy as np
import torch

from cadenza.training import checkpoint


def _parts(seed: int) -> dict:
    torch.manual_seed(seed)
    generator, critic = torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)
    g_optimizer = torch.optim.AdamW(generator.parameters(), lr=0.1)
    d_optimizer = torch.optim.SGD(critic.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(g_optimizer, lambda s: 1 / (s + 1))
    return {
        "model": generator, "critic": critic, "g_optimizer": g_optimizer,
        "d_optimizer": d_optimizer, "schedule": schedule,
        "windows": np.random.default_rng(seed), "samples": torch.Generator().manual_seed(seed),
    }  # fmt: skip


def _train(parts: dict, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(2, 4)
        x = x + torch.from_numpy(parts["windows"].normal(size=(2, 4))).float()
        x = x + torch.rand(2, 4, generator=parts["samples"])
        loss = parts["critic"](parts["model"](x)).sum()
        for name in ("g_optimizer", "d_optimizer"):
            parts[name].zero_grad()
        loss.backward()
        for name in ("g_optimizer", "d_optimizer", "schedule"):
            parts[name].step()


def _modules(parts: dict) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v for n in ("model", "critic") for k, v in parts[n].state_dict().items()}


def test_save_then_restore_continues_as_if_never_stopped(tmp_path):
    straight = _parts(0)
    _train(straight, 6)

    first = _parts(0)
    _train(first, 3)
    saver = checkpoint.Checkpointer(tmp_path, first, fingerprint="a")
    saver.save(3, best=0.5, history=[(1, 0.25)], memory=[torch.ones(2)])
    assert (tmp_path / "last" / "model.safetensors").is_file()
    assert (tmp_path / "last" / "critic.safetensors").is_file()
    torch.manual_seed(123)  # the global RNG moves on in the killed process

    second = _parts(1)  # another process: other initial weights and generators
    resumed = checkpoint.Checkpointer(tmp_path, second, fingerprint="a").restore()
    assert resumed.step == 3 and resumed.values["best"] == 0.5
    assert resumed.values["history"] == [(1, 0.25)]
    assert torch.equal(resumed.values["memory"][0], torch.ones(2))
    _train(second, 3)
    expected, got = _modules(straight), _modules(second)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert second["schedule"].get_last_lr() == straight["schedule"].get_last_lr()


def test_other_fingerprint_or_a_finished_run_touches_nothing(tmp_path):
    saved = _parts(0)
    checkpoint.Checkpointer(tmp_path, saved, fingerprint="a").save(10, best=1.0)
    fresh = _parts(1)
    before = {k: v.clone() for k, v in _modules(fresh).items()}
    rng_before = torch.get_rng_state()
    assert checkpoint.Checkpointer(tmp_path, fresh, fingerprint="b").restore() is None
    same = checkpoint.Checkpointer(tmp_path, fresh, fingerprint="a")
    assert same.restore(finished_at=10) is None
    assert all(torch.equal(before[k], v) for k, v in _modules(fresh).items())
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert same.restore(finished_at=11).step == 10
    assert checkpoint.Checkpointer(tmp_path / "none", fresh).restore() is None
