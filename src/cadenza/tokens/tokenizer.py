"""Build the miditok tokenizer that params.yaml describes, and load a saved one."""

from __future__ import annotations

import json
from pathlib import Path

from cadenza.tokens.keys import KEY_NORMALIZE

TOKENIZERS = ("REMI", "TSD", "MIDILike", "Structured")
# miditok's default range rewrites x/2 meters (e.g. 3/2, common in chorales); cover them.
TIME_SIGNATURE_RANGE = {8: [3, 12, 6], 4: [5, 6, 3, 2, 1, 4], 2: [1, 2, 3, 4]}
SPECIAL_TOKENS = ["PAD", "BOS", "EOS", "MASK"]
VOICE_PROGRAMS = "cadenza_voice_programs"  # key in the tokenizer config's additional params


def build_tokenizer(
    name: str,
    num_velocities: int,
    pitch_range: tuple[int, int],
    beat_resolution: int,
    voice_programs: bool = False,
    key_normalize: bool = False,
):
    """A fresh (untrained) tokenizer with every part in one token stream.

    voice_programs: number the parts of a score by register before encoding (see
    `cadenza.tokens.encode.number_voices`); saved in tokenizer.json, so every later encoding
    with this tokenizer (prompts in generate and serving included) does the same.
    key_normalize: move every score into C major / A minor before encoding
    (`cadenza.tokens.keys`); saved in tokenizer.json the same way."""
    import miditok

    if name not in TOKENIZERS:
        raise ValueError(f"tokenize.tokenizer = {name!r}: choose one of {', '.join(TOKENIZERS)}")
    config = miditok.TokenizerConfig(
        pitch_range=tuple(pitch_range),
        beat_res={(0, 4): beat_resolution, (4, 12): max(1, beat_resolution // 2)},
        # 0 = no Velocity tokens (miditok still wants a bin count).
        use_velocities=num_velocities > 0,
        num_velocities=max(1, num_velocities),
        special_tokens=SPECIAL_TOKENS,
        # Programs in one stream: multi-part pieces keep every part (miditok's default is
        # one sequence per track).
        use_programs=True,
        one_token_stream_for_programs=True,
        # Structured has no time-signature tokens.
        use_time_signatures=name != "Structured",
        time_signature_range=TIME_SIGNATURE_RANGE,
        **{VOICE_PROGRAMS: True} if voice_programs else {},
        **{KEY_NORMALIZE: True} if key_normalize else {},
    )
    return getattr(miditok, name)(config)


def load_tokenizer(path: Path):
    """A tokenizer saved by the tokenize stage (tokenizer.json)."""

    import miditok

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer; run `cadenza tokenize` first")
    name = json.loads(path.read_text()).get("tokenization")
    if name not in TOKENIZERS:
        raise ValueError(f"{path}: unknown tokenization {name!r}")
    return getattr(miditok, name)(params=path)


def special_ids(tokenizer) -> dict[str, int]:
    return {name: tokenizer[f"{name}_None"] for name in SPECIAL_TOKENS}


def uses_voice_programs(tokenizer) -> bool:
    return bool(getattr(tokenizer.config, "additional_params", {}).get(VOICE_PROGRAMS, False))


def tokens_per_note(tokenizer) -> int:
    """Tokens that spell one note after its onset: Pitch, plus Program, Velocity and Duration
    where the tokenizer writes them (REMI with numbered voices: 4, or 3 without velocities).
    Onset tokens (Bar, Position, TimeShift) are shared by the notes of an onset, not counted."""
    config = tokenizer.config
    per_note_program = config.use_programs and not config.program_changes
    return (
        1 + int(per_note_program) + int(config.use_velocities)
        + int(bool(config.use_note_duration_programs))
    )  # fmt: skip


def pitch_classes(tokenizer) -> list[int]:
    """(V,) the pitch class (0-11) of each token id, -1 for every token that is not a Pitch."""
    vocab = tokenizer.vocab
    out = [-1] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        if token.startswith("Pitch_"):
            out[index] = int(token.split("_", 1)[1]) % 12
    return out
