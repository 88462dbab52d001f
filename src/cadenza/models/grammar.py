"""A token grammar for sampling: which token may follow which, as tensors (torch only).

An undertrained generator writes sequences no tokenizer would: a REMI `Position` lower than
the one before it in the same bar, a `Pitch` without its `Velocity`/`Duration`. Decoded,
those put notes on top of notes already written (clusters of seconds, six voices at one
onset). The grammar masks such tokens before temperature / top-k / top-p, so the model's
probabilities are renormalised over the tokens that can follow. It is a finite-state machine
over token *kinds* (the kind of the last token decides which kinds may come next) plus one
counter per row (the last position in the current bar: positions must increase until the
next bar). With numbered voices (`tokenize.voice_programs`) a second counter keeps the voices
of one onset in order: a Program may not be lower than the one before it at the same
Position (top voice first, so no voice is written twice over at one onset).
`cadenza.tokens.grammar` builds it from a tokenizer's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Token kinds. START: before the first real token (after BOS); OTHER: anything unconstrained.
OTHER, START, BAR, TIMESIG, POSITION, PROGRAM, PITCH, VELOCITY, DURATION = range(9)
KINDS = 9


@dataclass
class GrammarState:
    last_kind: torch.Tensor  # (B,) kind of each row's last token
    last_position: torch.Tensor  # (B,) last Position value in the current bar, -1 after a bar
    last_program: torch.Tensor  # (B,) last Program at the current Position, -1 after one


class TokenGrammar:
    """kinds: (V,) kind of every token id; positions: (V,) the value of Position tokens (-1
    elsewhere); follows: (KINDS, KINDS) bool, follows[a, b] = a token of kind b may follow
    one of kind a; programs: (V,) the value of Program tokens (-1 elsewhere) when the voices
    of an onset must come in program order, else None."""

    def __init__(
        self,
        kinds: torch.Tensor,
        positions: torch.Tensor,
        follows: torch.Tensor,
        programs: torch.Tensor | None = None,
    ):
        self.kinds = kinds.long()
        self.positions = positions.long()
        self.programs = programs.long() if programs is not None else None
        self.is_program = self.kinds == PROGRAM
        # allowed[a] = (V,) mask of the ids allowed after a token of kind a
        self.allowed = follows[:, self.kinds]
        self.is_position = self.kinds == POSITION

    def to(self, device) -> TokenGrammar:
        self.kinds, self.positions = self.kinds.to(device), self.positions.to(device)
        self.allowed, self.is_position = self.allowed.to(device), self.is_position.to(device)
        self.is_program = self.is_program.to(device)
        if self.programs is not None:
            self.programs = self.programs.to(device)
        return self

    def start(self, prompt: torch.Tensor) -> GrammarState:
        """The state after reading prompt (B, P) token by token."""
        batch = prompt.shape[0]
        state = GrammarState(
            torch.full((batch,), START, dtype=torch.long, device=prompt.device),
            torch.full((batch,), -1, dtype=torch.long, device=prompt.device),
            torch.full((batch,), -1, dtype=torch.long, device=prompt.device),
        )
        for column in prompt.T:
            self.advance(state, column)
        return state

    def mask(self, state: GrammarState) -> torch.Tensor:
        """(B, V) True where a token may come next."""
        allowed = self.allowed[state.last_kind]
        later = self.positions[None, :] > state.last_position[:, None]
        allowed = allowed & (~self.is_position[None, :] | later)
        if self.programs is not None:
            in_order = self.programs[None, :] >= state.last_program[:, None]
            allowed = allowed & (~self.is_program[None, :] | in_order)
        return allowed

    def constrain(self, logits: torch.Tensor, state: GrammarState) -> torch.Tensor:
        return logits.masked_fill(~self.mask(state), float("-inf"))

    def advance(self, state: GrammarState, tokens: torch.Tensor) -> None:
        """Read one token per row (B,)."""
        kind = self.kinds[tokens]
        known = kind != OTHER  # special tokens (BOS, PAD) leave the state as it was
        state.last_kind = torch.where(known, kind, state.last_kind)
        state.last_position = torch.where(
            kind == BAR,
            torch.full_like(state.last_position, -1),
            torch.where(kind == POSITION, self.positions[tokens], state.last_position),
        )
        if self.programs is not None:
            new_onset = (kind == BAR) | (kind == POSITION)
            state.last_program = torch.where(
                new_onset,
                torch.full_like(state.last_program, -1),
                torch.where(kind == PROGRAM, self.programs[tokens], state.last_program),
            )

    def violations(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) how many tokens of each row (B, T) the grammar would not have allowed."""
        state = self.start(tokens[:, :0])
        count = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        for column in tokens.T:
            allowed = self.mask(state).gather(1, column[:, None])[:, 0]
            count += (~allowed).long()
            self.advance(state, column)
        return count
