"""What controlled generation holds fixed, in tokens: a voice's skeleton, a span of bars.

REMI with numbered voices (`tokenize.voice_programs`) writes every note as Program (its
voice), Pitch, Duration after the Position of its onset, so one voice of a token stream is a
subsequence: the Bars and TimeSigs, and for each of its notes its Position and its note
tokens. `voice_skeleton` cuts that out; `split_bars` cuts a stream at bar boundaries for
infilling. models/control.py holds the controllers that sample around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cadenza.models import grammar as g
from cadenza.models.control import ControlVocab
from cadenza.tokens.grammar import build_grammar
from cadenza.tokens.tokenizer import uses_voice_programs

NOTE_KINDS = (g.PITCH, g.VELOCITY, g.DURATION)


def control_grammar(tokenizer, what: str) -> tuple[g.TokenGrammar, ControlVocab]:
    """The token grammar and ids a controller needs; a ValueError naming what the tokenizer
    lacks when it cannot be controlled."""
    grammar = build_grammar(tokenizer)
    if grammar is None or not uses_voice_programs(tokenizer):
        raise ValueError(
            f"{what} needs a generator trained on REMI tokens without BPE and with numbered "
            "voices (tokenize.tokenizer: REMI, tokenize.voice_programs: true): this one's "
            "tokens have no grammar a voice can be held in"
        )
    vocab = ControlVocab(tokenizer["EOS_None"], tokenizer["PAD_None"], tokenizer["Bar_None"])
    return grammar, vocab


def voice_skeleton(grammar: g.TokenGrammar, ids: list[int], voice: int = 0) -> list[int]:
    """The tokens of one voice (Program `voice`) of a clean token stream: Bars, TimeSigs,
    and the Position and note tokens of each of the voice's notes."""
    kinds, programs = grammar.kinds.tolist(), grammar.programs.tolist()
    out: list[int] = []
    position: int | None = None  # the onset's Position, not yet written
    in_voice = False
    for token in ids:
        kind = kinds[token]
        if kind in (g.BAR, g.TIMESIG):
            out.append(token)
            in_voice, position = False, None
        elif kind == g.POSITION:
            position, in_voice = token, False
        elif kind == g.PROGRAM:
            in_voice = programs[token] == voice
            if in_voice:
                if position is not None:
                    out.append(position)
                    position = None
                out.append(token)
        elif kind in NOTE_KINDS and in_voice:
            out.append(token)
    return out


@dataclass
class BarSpan:
    """A token stream cut around bars first..last (1-based, inclusive): prefix ends with the
    span's first Bar (and its TimeSig, if any), suffix starts with the Bar after the span."""

    prefix: list[int]
    span: list[int]
    suffix: list[int]
    num_bars: int


def split_bars(grammar: g.TokenGrammar, ids: list[int], first: int, last: int) -> BarSpan:
    """ids (clean) cut at bars first..last; a ValueError naming --bars when out of range."""
    kinds = grammar.kinds.tolist()
    bars = [i for i, token in enumerate(ids) if kinds[token] == g.BAR]
    if not 1 <= first <= last <= len(bars):
        raise ValueError(
            f"--bars {first}:{last}: the piece has {len(bars)} bars; give 1 <= A <= B <= "
            f"{len(bars)} (bars counted from 1, both ends included)"
        )
    start = bars[first - 1] + 1
    while start < len(ids) and kinds[ids[start]] == g.TIMESIG:
        start += 1
    end = bars[last] if last < len(bars) else len(ids)
    return BarSpan(ids[:start], ids[start:end], ids[end:], last - first + 1)


def pad_rows(rows: list[list[int]], pad: int) -> torch.Tensor:
    """(B, max length) of rows, PAD after each row's end."""
    width = max(1, max(map(len, rows)))
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
