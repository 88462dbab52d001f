"""Controlled sampling: a given voice held, or a span of bars written to measure (torch only).

Both controllers speak the token grammar's protocol (start / constrain / advance, as
models.grammar.TokenGrammar does), so `TransformerXL.generate` takes them as its `grammar`,
and both apply that grammar too: what they allow is always a sequence the tokenizer writes.

`Harmonize` holds a *skeleton*: the given voice's own tokens (Bar, TimeSig, and for each of
its notes the Position, its Program, Pitch, Duration), one row per sample, PAD after its end.
The model writes everything else, left to right:
- the skeleton's next token is forced whenever the one before it came from the skeleton and
  it is a TimeSig or part of a note (Program, Pitch, Duration), so each given note is written
  whole, at the onset where it stands, before any other voice of that onset;
- elsewhere the model chooses, except that it may not write the given voice's Program, may
  not place a Position past the skeleton's next onset (it cannot skip a given note), may
  write a Bar only when the skeleton's next token is that Bar, writes no TimeSig of its own,
  and may end (EOS) only once the skeleton is used up.
`Infill` lets the model write a fixed number of bars and then ends the row: the Bar that
would open the bar after the span is where the row stops (EOS from then on); before that EOS
is masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cadenza.models import grammar as g


@dataclass
class ControlVocab:
    """Token ids a controller needs: eos, pad, bar; voice_program (the held voice's Program
    id) for harmonizing."""

    eos: int
    pad: int
    bar: int
    voice_program: int = -1


@dataclass
class HarmonizeState:
    rules: g.GrammarState
    pointer: torch.Tensor  # (B,) index of the skeleton's next token
    on_skeleton: torch.Tensor  # (B,) the last token came from the skeleton
    last_position: torch.Tensor  # (B,) last Position value in the bar, -1 after a Bar


class Harmonize:
    """skeleton (B, L): the held voice's tokens per row, PAD-padded; the model writes voices
    (Programs) 1 .. num_voices - 1 around it."""

    FORCED_KINDS = (g.TIMESIG, g.PROGRAM, g.PITCH, g.VELOCITY, g.DURATION)

    def __init__(
        self, grammar: g.TokenGrammar, vocab: ControlVocab, skeleton: torch.Tensor,
        num_voices: int = 4,
    ):  # fmt: skip
        self.grammar, self.vocab = grammar, vocab
        pad = torch.full((skeleton.shape[0], 1), vocab.pad, dtype=torch.long)
        self.skeleton = torch.cat([skeleton.long(), pad], dim=1)  # a PAD past every end
        self.lengths = (skeleton != vocab.pad).sum(dim=1)
        self.forced_kind = torch.zeros(g.KINDS, dtype=torch.bool)
        self.forced_kind[list(self.FORCED_KINDS)] = True
        vocab_size = grammar.kinds.shape[0]
        self.free_never = torch.zeros(vocab_size, dtype=torch.bool)  # never chosen freely
        self.free_never[grammar.kinds == g.TIMESIG] = True
        if grammar.programs is not None:
            self.free_never[(grammar.kinds == g.PROGRAM) & (grammar.programs >= num_voices)] = True
        if vocab.voice_program >= 0:
            self.free_never[vocab.voice_program] = True

    def start(self, prompt: torch.Tensor) -> HarmonizeState:
        """The prompt is [BOS] per row: the skeleton starts at its first token."""
        batch = prompt.shape[0]
        zeros = torch.zeros(batch, dtype=torch.long)
        return HarmonizeState(
            self.grammar.start(prompt), zeros, torch.zeros(batch, dtype=torch.bool),
            torch.full((batch,), -1, dtype=torch.long),
        )  # fmt: skip

    def _next(self, state: HarmonizeState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(next skeleton token, its kind, whether the skeleton is used up) per row."""
        token = self.skeleton.gather(1, state.pointer[:, None])[:, 0]
        done = state.pointer >= self.lengths
        return token, self.grammar.kinds[token], done

    def mask(self, state: HarmonizeState) -> torch.Tensor:
        """(B, V) True where a token may come next."""
        allowed = self.grammar.mask(state.rules) & ~self.free_never[None, :]
        token, kind, done = self._next(state)
        kinds = self.grammar.kinds[None, :]
        positions = self.grammar.positions[None, :]
        next_position = torch.where(
            kind == g.POSITION, self.grammar.positions[token], torch.full_like(token, 1 << 30)
        )
        # a Position may not pass the skeleton's next onset
        allowed &= (kinds != g.POSITION) | (positions <= next_position[:, None])
        # a Bar only where the skeleton has one next; EOS only once it is used up
        allowed[:, self.vocab.bar] &= kind == g.BAR
        allowed &= kinds != g.OTHER  # no special token but the EOS below
        allowed[:, self.vocab.eos] = done
        forced = state.on_skeleton & self.forced_kind[kind] & ~done
        one_hot = torch.zeros_like(allowed)
        one_hot[torch.arange(len(token)), token] = True
        return torch.where(forced[:, None], one_hot, allowed)

    def constrain(self, logits: torch.Tensor, state: HarmonizeState) -> torch.Tensor:
        return logits.masked_fill(~self.mask(state), float("-inf"))

    def advance(self, state: HarmonizeState, tokens: torch.Tensor) -> None:
        token, _, done = self._next(state)
        took = (tokens == token) & ~done
        state.pointer = state.pointer + took.long()
        state.on_skeleton = took
        self.grammar.advance(state.rules, tokens)


@dataclass
class InfillState:
    rules: g.GrammarState
    bars_left: torch.Tensor  # (B,) Bars the row may still open inside the span
    done: torch.Tensor  # (B,) the span is written: EOS from here on


class Infill:
    """num_bars (B,): bars to write per row; the prompt ends with the span's first Bar."""

    def __init__(self, grammar: g.TokenGrammar, vocab: ControlVocab, num_bars: torch.Tensor):
        self.grammar, self.vocab = grammar, vocab
        self.num_bars = num_bars.long()

    def start(self, prompt: torch.Tensor) -> InfillState:
        done = torch.zeros(prompt.shape[0], dtype=torch.bool)
        return InfillState(self.grammar.start(prompt), self.num_bars - 1, done)

    def mask(self, state: InfillState) -> torch.Tensor:
        allowed = self.grammar.mask(state.rules) & (self.grammar.kinds != g.OTHER)[None, :]
        eos_only = torch.zeros_like(allowed)
        eos_only[:, self.vocab.eos] = True
        return torch.where(state.done[:, None], eos_only, allowed)

    def constrain(self, logits: torch.Tensor, state: InfillState) -> torch.Tensor:
        return logits.masked_fill(~self.mask(state), float("-inf"))

    def advance(self, state: InfillState, tokens: torch.Tensor) -> None:
        bar = (tokens == self.vocab.bar) & ~state.done
        state.done = state.done | (bar & (state.bars_left <= 0))
        state.bars_left = state.bars_left - bar.long()
        self.grammar.advance(state.rules, tokens)
