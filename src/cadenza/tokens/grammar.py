"""The token grammar of a tokenizer's vocabulary, for constrained sampling.

Only REMI without BPE has one here (its kinds: Bar, TimeSig, Position, Program, Pitch,
Velocity, Duration, plus special tokens; with numbered voices, the Programs of an onset in
order); any other tokenization, a BPE-trained vocabulary or
a token kind this module does not know gives None, and sampling is then unconstrained.
`tests/test_sampling.py` checks that every real sequence of the corpus obeys it.
"""

from __future__ import annotations

import logging

import torch

from cadenza.models import grammar as g
from cadenza.tokens.tokenizer import uses_voice_programs

log = logging.getLogger(__name__)
KIND_NAMES = {"Bar": "BAR", "TimeSig": "TIMESIG", "Position": "POSITION", "Program": "PROGRAM",
              "Pitch": "PITCH", "PitchDrum": "PITCH", "Velocity": "VELOCITY",
              "Duration": "DURATION"}  # fmt: skip
SPECIAL = {"PAD", "BOS", "EOS", "MASK"}


def build_grammar(tokenizer):
    """A models.grammar.TokenGrammar for the tokenizer, or None (said why in the log)."""

    name = type(tokenizer).__name__
    if name != "REMI":
        log.info("no token grammar for %s tokens: sampling unconstrained", name)
        return None
    if getattr(tokenizer, "is_trained", False):
        log.info("no token grammar for a BPE vocabulary: sampling unconstrained")
        return None
    vocab = tokenizer.vocab
    size = max(vocab.values()) + 1
    kinds = torch.full((size,), g.OTHER, dtype=torch.long)
    positions = torch.full((size,), -1, dtype=torch.long)
    programs = torch.full((size,), -1, dtype=torch.long)
    for token, index in vocab.items():
        prefix, _, value = token.partition("_")
        if prefix in SPECIAL:
            continue
        if prefix not in KIND_NAMES:
            log.info("no token grammar: token kind %r is not modelled", prefix)
            return None
        kinds[index] = getattr(g, KIND_NAMES[prefix])
        if prefix == "Position":
            positions[index] = int(value)
        if prefix == "Program":
            programs[index] = int(value)
    present = set(kinds.tolist())
    note_start = g.PROGRAM if g.PROGRAM in present else g.PITCH
    after_pitch = g.VELOCITY if g.VELOCITY in present else g.DURATION
    follows = torch.zeros((g.KINDS, g.KINDS), dtype=torch.bool)
    rules = {
        g.START: [g.BAR],
        g.BAR: [g.BAR, g.TIMESIG, g.POSITION],
        g.TIMESIG: [g.BAR, g.POSITION],
        g.POSITION: [note_start],
        g.PROGRAM: [g.PITCH],
        g.PITCH: [after_pitch],
        g.VELOCITY: [g.DURATION],
        g.DURATION: [note_start, g.POSITION, g.BAR],
    }
    for kind, allowed in rules.items():
        follows[kind, allowed] = True
    follows[g.OTHER, :] = True
    follows[:, g.OTHER] = True  # special tokens (EOS ends a piece) are the caller's to mask
    # Numbered voices come top voice first at each onset (tokens.encode.number_voices); other
    # multi-program streams keep their file's track order, which the grammar cannot know.
    ordered = programs if uses_voice_programs(tokenizer) else None
    return g.TokenGrammar(kinds, positions, follows, ordered)


PITCH_PREFIXES = ("Pitch", "NoteOn")  # a note's pitch: REMI, TSD, Structured; MIDILike


def pitch_mask(tokenizer):
    """A bool tensor (vocabulary size,) marking the tokens that choose a note's pitch, for
    `sampling.pitch_top_p`; None for a BPE-trained vocabulary (merged tokens mix pitch with
    the rest) or a vocabulary without pitch tokens (said in the log: sampling then ignores
    pitch_top_p)."""

    if getattr(tokenizer, "is_trained", False):
        log.info("no pitch tokens in a BPE vocabulary: pitch_top_p has no effect")
        return None
    vocab = tokenizer.vocab
    mask = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    for token, index in vocab.items():
        if token.partition("_")[0] in PITCH_PREFIXES:
            mask[index] = True
    if not mask.any():
        log.info("no pitch tokens in %s's vocabulary: pitch_top_p has no effect",
                 type(tokenizer).__name__)  # fmt: skip
        return None
    return mask
