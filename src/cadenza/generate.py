"""Generate MIDI from a trained generator: a checkpoint folder or an MLflow model URI."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from symusic import Score

from cadenza import audio
from cadenza.models.control import Harmonize, Infill
from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.sampling import PLAIN, SAMPLING_FILE, Sampling, read_sampling
from cadenza.tokens.control import (
    BarSpan,
    control_grammar,
    pad_rows,
    split_bars,
    voice_skeleton,
)
from cadenza.tokens.encode import normalized_ids
from cadenza.tokens.grammar import build_grammar, pitch_mask
from cadenza.tokens.keys import place, place_samples, uses_key_normalize
from cadenza.tokens.tokenizer import load_tokenizer, uses_voice_programs
from cadenza.training import checkpoint


@dataclass
class Generated:
    token_ids: list[int]
    num_notes: int
    out_path: Path


def resolve_model_dir(model: str, workdir: Path) -> Path:
    """A local checkpoint folder, or download `models:/...` / `runs:/...` artifacts."""
    if model.startswith(("models:/", "runs:/")):
        import mlflow  # lazy: heavy, and only a models:/ or runs:/ URI needs it

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(workdir)))
        configs = sorted(local.rglob("config.json"))
        if not configs:
            raise FileNotFoundError(f"{model}: no config.json among its artifacts")
        return configs[0].parent
    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder (no config.json)")
    return folder


def load_generator(folder: Path):
    """(model in eval mode, tokenizer) from a self-contained checkpoint folder."""
    config = checkpoint.read_config(folder)
    model = TransformerXL(GeneratorConfig(**config["model"]))
    checkpoint.load_weights(model, folder)
    return model.eval(), load_tokenizer(folder / "tokenizer.json")


def primer_ids(tokenizer, primer: Path, num_tokens: int) -> tuple[list[int], int]:
    """(the opening num_tokens tokens of a MIDI file, the semitones it was key-normalized
    by: 0 unless the tokenizer normalizes keys)."""
    ids, shift = normalized_ids(tokenizer, Score(str(primer)))
    return ids[:num_tokens], shift


def clean_ids(tokenizer, ids: list[int]) -> list[int]:
    """Generated ids up to the first EOS, special tokens dropped: ready to decode."""
    eos = tokenizer["EOS_None"]
    if eos in ids:
        ids = ids[: ids.index(eos)]
    specials = {tokenizer[f"{name}_None"] for name in ("PAD", "BOS", "EOS", "MASK")}
    return [i for i in ids if i not in specials]


def decode_ids(tokenizer, ids: list[int]):
    """Clean token ids decoded to a Score. With numbered voices (tokenize.voice_programs)
    each voice stays its own track, named "Voice k" (1 = top), and plays program 0 again:
    the voice number is for the model, not a choice of instrument, so a rendered sample
    sounds like the corpus it was numbered from."""
    score = tokenizer.decode(ids)
    if uses_voice_programs(tokenizer):
        for track in score.tracks:
            if not track.is_drum:
                track.name = f"Voice {track.program + 1}"
                track.program = 0
                _one_note_at_a_time(track)
    return score


def _one_note_at_a_time(track) -> None:
    """A voice sings one note at a time: a note still sounding when the same voice's next
    onset comes is cut there (legato). Real chorale parts never need it; a generator's
    Duration token can overrun its voice's next note, which would read as an extra voice."""
    notes = sorted(track.notes, key=lambda n: n.time)
    onsets = sorted({n.time for n in notes})
    following = {t: nxt for t, nxt in zip(onsets, onsets[1:], strict=False)}
    for note in notes:
        nxt = following.get(note.time)
        if nxt is not None and note.time + note.duration > nxt:
            note.duration = nxt - note.time


def sample_score(
    net,
    tokenizer,
    num_tokens: int,
    sampling: Sampling = PLAIN,
    seed: int = 0,
    prompt: list[int] | None = None,
    key_shift: int | None = None,
):
    """(Score, generated ids) continuing [BOS] + prompt by num_tokens tokens drawn with
    `sampling`; with its grammar, only tokens the tokenizer's grammar allows
    (cadenza.tokens.grammar). A key-normalized model's output is moved back by key_shift (what
    its prompt was normalized by), or with None into a key drawn (by seed) from its train
    split's keys."""
    prompt_ids = [tokenizer["BOS_None"], *(prompt or [])]
    generator = torch.Generator().manual_seed(seed)
    sequence = net.generate(
        torch.tensor([prompt_ids]), num_tokens, sampling.temperature, sampling.top_k,
        sampling.top_p, generator,
        grammar=build_grammar(tokenizer) if sampling.grammar else None,
        pitch_mask=pitch_mask(tokenizer) if sampling.pitch_top_p < 1.0 else None,
        pitch_top_p=sampling.pitch_top_p, stop_token=tokenizer["EOS_None"],
    )  # fmt: skip
    return placed_score(tokenizer, clean_ids(tokenizer, sequence[0, 1:].tolist()), seed, key_shift)


def placed_score(tokenizer, ids: list[int], seed: int, key_shift: int | None):
    """(Score, ids) of clean ids, moved back by key_shift (or into a key drawn by seed when
    None) when the tokenizer normalizes keys."""
    if ids and uses_key_normalize(tokenizer):
        row = np.asarray([ids])
        placed = (
            place_samples(tokenizer, row, seed)
            if key_shift is None
            else place(tokenizer, row, np.array([-key_shift]))
        )
        ids = placed[0].tolist()
    return decode_ids(tokenizer, ids), ids


def generate_midi(
    model: str,
    num_tokens: int,
    out_path: Path,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    primer: Path | None = None,
    primer_tokens: int = 64,
    default_sampling: Sampling | dict | None = None,
    grammar: bool | None = None,
    pitch_top_p: float | None = None,
    harmonize: Path | None = None,
    infill: Path | None = None,
    bars: str | None = None,
) -> Generated:
    """Sample a MIDI file: from nothing, continuing a primer, harmonizing a melody (its top
    line becomes voice 1, the model writes the others) or infilling bars A:B of a piece
    (everything else kept). A sampling value left None comes from the model's sampling.json
    (a registered model carries the pipeline's choice), else from `default_sampling` (the
    project's `sampling` section), else plain sampling."""
    check_task(primer, harmonize, infill, bars)
    if isinstance(default_sampling, dict):
        default_sampling = Sampling.from_dict(default_sampling)
    with tempfile.TemporaryDirectory() as tmp:
        folder = resolve_model_dir(model, Path(tmp))
        net, tokenizer = load_generator(folder)
        carried = (folder / SAMPLING_FILE).is_file()
        defaults = read_sampling(folder) if carried else (default_sampling or PLAIN)
    given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "grammar": grammar,
             "pitch_top_p": pitch_top_p}  # fmt: skip
    sampling = replace(defaults, **{k: v for k, v in given.items() if v is not None})
    if harmonize is not None or infill is not None:
        melody = Score(str(harmonize)) if harmonize is not None else None
        piece = Score(str(infill)) if infill is not None else None
        score, ids = controlled_score(net, tokenizer, sampling, seed, melody, piece, bars)
    else:
        prompt, shift = primer_ids(tokenizer, primer, primer_tokens) if primer else ([], None)
        score, ids = sample_score(net, tokenizer, num_tokens, sampling, seed, prompt, shift)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    score.dump_midi(str(out_path))
    return Generated(ids, int(score.note_num()), out_path)


def write_audio(midi: Path, audio_format: str, synthesizer: str = "tinysoundfont") -> Path:
    """Render `midi` to <midi stem>.<audio_format> beside it."""
    if audio_format not in audio.FORMATS:
        raise ValueError(f"--audio {audio_format!r}: choose one of {', '.join(audio.FORMATS)}")
    if synthesizer not in get_args(audio.Synthesizer):
        raise ValueError(
            f"--synthesizer {synthesizer!r}: choose one of {', '.join(get_args(audio.Synthesizer))}"
        )
    spec = audio.AudioSpec(synthesizer, audio_format)
    if reason := audio.unavailable_reason(spec):
        raise ValueError(reason)
    return audio.render(midi, midi.with_suffix(spec.suffix), spec)


def controlled_ids(
    net, tokenizer, controller, prompt: torch.Tensor, num_tokens: int, sampling: Sampling,
    seed: int,
) -> list[list[int]]:  # fmt: skip
    """Clean ids per row of prompt (B, P) extended by num_tokens under `controller`
    (models.control), the prompt's own tokens after its BOS included."""
    generator = torch.Generator().manual_seed(seed)
    sequence = net.generate(
        prompt, num_tokens, sampling.temperature, sampling.top_k, sampling.top_p, generator,
        grammar=controller,
        pitch_mask=pitch_mask(tokenizer) if sampling.pitch_top_p < 1.0 else None,
        pitch_top_p=sampling.pitch_top_p, stop_token=tokenizer["EOS_None"],
    )  # fmt: skip
    return [clean_ids(tokenizer, row[1:].tolist()) for row in sequence]


def harmonize_ids(
    net, tokenizer, skeletons: list[list[int]], sampling: Sampling = PLAIN, seed: int = 0,
    num_voices: int = 4, tokens_per_given: float = 6.0,
) -> tuple[list[list[int]], list[bool]]:  # fmt: skip
    """(ids, finished) per skeleton (tokens.control.voice_skeleton of voice 0): the model
    writes voices 1 .. num_voices - 1 around each skeleton's notes, up to tokens_per_given
    times its length. A row that runs out of tokens gets the rest of its skeleton appended
    unharmonized (finished False), so every given note is always there."""
    grammar, vocab = control_grammar(tokenizer, "harmonizing")
    vocab.voice_program = tokenizer["Program_0"]
    controller = Harmonize(grammar, vocab, pad_rows(skeletons, vocab.pad), num_voices)
    prompt = torch.full((len(skeletons), 1), tokenizer["BOS_None"], dtype=torch.long)
    budget = int(tokens_per_given * max(map(len, skeletons)))
    rows = controlled_ids(net, tokenizer, controller, prompt, budget, sampling, seed)
    out, finished = [], []
    for skeleton, ids in zip(skeletons, rows, strict=True):
        held = len(voice_skeleton(grammar, ids, 0))
        out.append(ids + skeleton[held:])
        finished.append(held == len(skeleton))
    return out, finished


def infill_ids(
    net, tokenizer, span: BarSpan, sampling: Sampling = PLAIN, seed: int = 0,
    num_candidates: int = 1, tokens_per_bar: int = 160,
) -> list[list[int]]:  # fmt: skip
    """num_candidates new versions of span.span: prefix as the prompt, the span's bars
    written by the model (models.control.Infill), the suffix as it was. A candidate that runs
    out of tokens gets empty bars up to the span's length."""
    grammar, vocab = control_grammar(tokenizer, "infilling")
    controller = Infill(grammar, vocab, torch.full((num_candidates,), span.num_bars))
    prompt = torch.tensor([[tokenizer["BOS_None"], *span.prefix]] * num_candidates)
    budget = tokens_per_bar * span.num_bars
    rows = controlled_ids(net, tokenizer, controller, prompt, budget, sampling, seed)
    out = []
    for ids in rows:
        written = ids[len(span.prefix) :]
        if len(written) and written[-1] == vocab.bar:  # the Bar that ended the span
            written = written[:-1]
        missing = span.num_bars - 1 - written.count(vocab.bar)
        out.append(span.prefix + written + [vocab.bar] * max(0, missing) + span.suffix)
    return out


def check_task(primer, harmonize, infill, bars) -> None:
    """One task per call; --bars goes with --infill and only with it."""
    given = [name for name, value in (("--primer", primer), ("--harmonize", harmonize),
             ("--infill", infill)) if value is not None]  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)}: give one of them (one task per call)")
    if (infill is None) != (bars is None):
        raise ValueError("--infill and --bars A:B go together (the bars to rewrite, from 1)")


def parse_bars(bars: str) -> tuple[int, int]:
    """'A:B' -> (A, B): bars counted from 1, both included."""
    first, sep, last = bars.partition(":")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"--bars {bars!r}: give A:B, bars counted from 1, e.g. --bars 5:8")
    return int(first), int(last)


def melody_skeleton(tokenizer, melody: Score) -> tuple[list[int], int]:
    """(skeleton of voice 1, key shift) of a melody file's top line: of several pitched
    tracks the highest by mean pitch; a ValueError naming the file's problem when none."""
    grammar, _ = control_grammar(tokenizer, "--harmonize")
    tracks = [t for t in melody.tracks if not t.is_drum and t.note_num() > 0]
    if not tracks:
        raise ValueError("--harmonize: the melody file has no pitched notes")
    top = max(tracks, key=lambda t: sum(n.pitch for n in t.notes) / t.note_num()).copy()
    top.program, top.name = 0, "Voice 1"
    line = melody.copy()
    line.tracks = [top]
    ids, shift = normalized_ids(tokenizer, line)
    skeleton = voice_skeleton(grammar, clean_ids(tokenizer, ids), 0)
    if not skeleton:
        raise ValueError("--harmonize: no note of the melody fits the model's tokens")
    return skeleton, shift


def controlled_score(net, tokenizer, sampling, seed, melody=None, piece=None, bars=None):
    """(Score, ids) of a melody (a Score) harmonized, or bars "A:B" of a piece infilled."""
    if melody is not None:
        skeleton, shift = melody_skeleton(tokenizer, melody)
        (ids,), _ = harmonize_ids(net, tokenizer, [skeleton], sampling, seed)
        return placed_score(tokenizer, ids, seed, shift)
    grammar, _ = control_grammar(tokenizer, "--infill")
    first, last = parse_bars(bars)
    ids, shift = normalized_ids(tokenizer, piece)
    span = split_bars(grammar, clean_ids(tokenizer, ids), first, last)
    return placed_score(tokenizer, infill_ids(net, tokenizer, span, sampling, seed)[0], seed, shift)
