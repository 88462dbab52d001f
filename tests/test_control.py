"""Control: a melody harmonized, bars infilled; the given notes come back exactly."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from symusic import Score
from typer.testing import CliRunner

from cadenza.cli import app
from cadenza.generate import clean_ids, decode_ids, harmonize_ids, infill_ids
from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.paths import Paths
from cadenza.sampling import PLAIN
from cadenza.stages import pretrain as pretrain_stage
from cadenza.tokens.control import control_grammar, split_bars, voice_skeleton
from cadenza.tokens.store import load_split
from cadenza.tokens.tokenizer import load_tokenizer

from .test_pretrain import _project, _settings


@pytest.fixture(scope="module")
def untrained(token_project):
    """An untrained generator (the hardest case for the constraints) and the real chorales'
    token streams of the tokenized project."""
    tokenizer = load_tokenizer(token_project / "data" / "tokens" / "tokenizer.json")
    torch.manual_seed(0)
    config = GeneratorConfig(vocab_size=len(tokenizer.vocab), d_model=32, n_layers=1,
                             n_heads=2, d_ff=64, seg_len=32, mem_len=32, dropout=0.0)  # fmt: skip
    net = TransformerXL(config).eval()
    tokens, offsets = load_split(token_project / "data" / "tokens", "train")
    documents = [
        clean_ids(tokenizer, tokens[a:b].tolist())
        for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]
    grammar, _ = control_grammar(tokenizer, "the test")
    chorales = [d for d in documents if max(grammar.programs[d].tolist()) >= 3]  # 4 voices
    assert chorales, "the project's train split holds no chorale"
    return net, tokenizer, grammar, chorales


def _voice_notes(tokenizer, ids, name="Voice 1") -> Counter:
    score = decode_ids(tokenizer, ids)
    return Counter(
        (n.time, n.duration, n.pitch) for t in score.tracks if t.name == name for n in t.notes
    )


def test_harmonized_sopranos_come_back_note_for_note(untrained):
    net, tokenizer, grammar, chorales = untrained
    skeletons = [voice_skeleton(grammar, d[:400]) for d in chorales[:2]]
    out, finished = harmonize_ids(net, tokenizer, skeletons, PLAIN, seed=3)
    assert all(finished)
    for skeleton, ids in zip(skeletons, out, strict=True):
        assert voice_skeleton(grammar, ids) == skeleton
        assert _voice_notes(tokenizer, ids) == _voice_notes(tokenizer, skeleton)
        assert grammar.violations(torch.tensor([ids])).item() == 0
        programs = {int(grammar.programs[t]) for t in ids if grammar.programs[t] >= 0}
        assert programs <= {0, 1, 2, 3} and len(programs) > 1  # the model wrote other voices
        assert ids.count(tokenizer["Bar_None"]) == skeleton.count(tokenizer["Bar_None"])
        assert len(ids) > len(skeleton)


def test_a_harmonization_that_runs_out_of_tokens_keeps_every_given_note(untrained):
    net, tokenizer, grammar, chorales = untrained
    skeleton = voice_skeleton(grammar, chorales[0][:400])
    (ids,), (finished,) = harmonize_ids(net, tokenizer, [skeleton], PLAIN, 0, tokens_per_given=0.5)
    assert not finished and voice_skeleton(grammar, ids) == skeleton


def test_infill_rewrites_only_the_span_and_keeps_the_bar_count(untrained):
    net, tokenizer, grammar, chorales = untrained
    piece = chorales[0][:600]
    bars = piece.count(tokenizer["Bar_None"])
    span = split_bars(grammar, piece, 2, 3)
    assert span.prefix + span.span + span.suffix == piece
    results = infill_ids(net, tokenizer, span, PLAIN, seed=1, num_candidates=3)
    for ids in results:
        assert ids[: len(span.prefix)] == span.prefix
        assert ids[len(ids) - len(span.suffix) :] == span.suffix
        assert ids.count(tokenizer["Bar_None"]) == bars
        assert grammar.violations(torch.tensor([ids])).item() == 0
    assert len({tuple(ids) for ids in results}) > 1  # sampled, not copied
    with pytest.raises(ValueError, match=r"--bars 4:99: the piece has \d+ bars"):
        split_bars(grammar, piece, 4, 99)


def _pitches(track) -> list[int]:
    return [n.pitch for n in sorted(track.notes, key=lambda n: (n.time, n.pitch))]


@pytest.fixture(scope="module")
def trained(token_project, tmp_path_factory):
    root = _project(token_project, tmp_path_factory.mktemp("control") / "p", max_steps=12)
    pretrain_stage.run(_settings(root).pretrain, Paths(root=root, corpus="mine"), track=False)
    return root / "models" / "generator-mle"


def test_generate_harmonizes_a_melody_and_infills_bars(trained, chorale_dir, tmp_path):
    chorale = next(chorale_dir.glob("*.mid"))
    source = Score(str(chorale))
    melody = Score(source.ticks_per_quarter)
    melody.tempos, melody.time_signatures = source.tempos, source.time_signatures
    pitched = [t for t in source.tracks if t.note_num()]
    top = max(pitched, key=lambda t: np.mean([n.pitch for n in t.notes]))
    melody.tracks.append(top.copy())
    melody_path = tmp_path / "melody.mid"
    melody.dump_midi(str(melody_path))
    out = tmp_path / "harmonized.mid"
    cli = CliRunner()  # in-process: the real command, without a second interpreter start
    run = cli.invoke(app, ["generate", "-m", str(trained), "--harmonize", str(melody_path),
                           "-o", str(out)])  # fmt: skip
    assert run.exit_code == 0, run.output
    harmonized = Score(str(out))
    voices = {t.name: t for t in harmonized.tracks}
    assert len(voices) > 1
    given = Score(str(melody_path)).resample(harmonized.ticks_per_quarter)
    assert _pitches(voices["Voice 1"]) == _pitches(given.tracks[0])
    filled = tmp_path / "filled.mid"
    infill = ["generate", "-m", str(trained), "--infill", str(chorale)]
    run = cli.invoke(app, [*infill, "--bars", "2:3", "-o", str(filled)])
    assert run.exit_code == 0, run.output
    assert Score(str(filled)).note_num() > 0
    bad_requests = {
        "--bars '3': give A:B": ["--bars", "3"],
        "--bars 9:999: the piece has": ["--bars", "9:999"],
        "--primer and --infill": ["--primer", str(chorale), "--bars", "1:2"],
    }
    for message, bad in bad_requests.items():
        run = cli.invoke(app, [*infill, *bad, "-o", str(tmp_path / "x.mid")])
        assert run.exit_code == 1 and message in run.output, run.output
