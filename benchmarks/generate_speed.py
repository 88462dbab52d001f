"""Generation speed: our decoder against references measured in the same run, same model
size, same number of tokens, at batch 1 (a user waiting for one piece) and batched (the
evaluation's samples).

    python benchmarks/generate_speed.py [--tokens 1024] [--batch 64] [--rounds 3] [--threads N]

Decoders (temperature-1 sampling from [BOS], cpu preset dims):
- ours: `TransformerXL.generate` (ring-buffer key/value cache, one matmul for q/k/v);
- previous: the cached loop it replaced (`_forward_cached` per token: the window's keys
  copied by torch.cat every step, attention through scaled_dot_product_attention);
- nanoGPT: a nanoGPT-style decoder of the same dims with a key/value cache trimmed to the
  same window (benchmarks/nanogpt_reference.py), the reference;
- ours+grammar: ours with the token grammar's mask applied every step (`sampling.grammar`);
- naive: recompute the whole sequence for every token (`generate_naive`; fewer tokens,
  `--naive-tokens`), and a check that ours samples exactly the same tokens.
Rounds alternate the decoders so a shared box slows all of them alike; the script prints
the median tokens/s of each (min-max over rounds) and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from nanogpt_reference import NanoGPT

from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.models.sampling import sample_next

VOCAB = 466  # REMI vocabulary of the Bach corpus
DIMS = dict(d_model=192, n_layers=4, n_heads=4, d_ff=768, seg_len=128, mem_len=128)  # cpu


@torch.no_grad()
def previous_generate(model: TransformerXL, prompt: torch.Tensor, num_tokens: int, generator):
    """The cached generation loop before the ring buffer (kept here as a baseline)."""
    cache = model.empty_cache(prompt.shape[0], prompt.device)
    logits = model._forward_cached(prompt, cache, 0)
    out, position = [prompt], prompt.shape[1]
    for _ in range(num_tokens):
        next_token = sample_next(logits[:, -1], 1.0, 0, 1.0, generator)
        out.append(next_token[:, None])
        logits = model._forward_cached(next_token[:, None], cache, position)
        position += 1
    return torch.cat(out, dim=1)


def synthetic_grammar(vocab: int):
    """A REMI-shaped grammar over `vocab` ids (kinds dealt out in turn, positions 0..31):
    the same tensor work per token as the real one, without needing a corpus."""
    from cadenza.models import grammar as g

    kinds = torch.arange(vocab) % (g.KINDS - 2) + 2  # BAR..DURATION
    positions = torch.where(kinds == g.POSITION, torch.arange(vocab) % 32, -1)
    follows = torch.ones((g.KINDS, g.KINDS), dtype=torch.bool)
    return g.TokenGrammar(kinds, positions, follows)


def timed(fn) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def run_rounds(decoders: dict, batch: int, num_tokens: int, rounds: int) -> dict[str, list]:
    """tokens/s of every decoder per round, decoders alternating within a round."""
    prompt = torch.zeros(batch, 1, dtype=torch.long)
    speeds: dict[str, list] = {name: [] for name in decoders}
    for _ in range(rounds):
        for name, decode in decoders.items():
            seconds, _ = timed(
                lambda d=decode: d(prompt, num_tokens, torch.Generator().manual_seed(1))
            )
            speeds[name].append(batch * num_tokens / seconds)
    return speeds


def report(title: str, speeds: dict[str, list], reference: str) -> None:
    print(f"\n{title}")
    for name, values in speeds.items():
        print(
            f"  {name:>9}: {statistics.median(values):9.1f} tokens/s "
            f"(min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"
        )
    for name in speeds:
        if name == reference:
            continue
        ratios = [a / b for a, b in zip(speeds[name], speeds[reference], strict=True)]
        print(
            f"  ratio {name} / {reference}: {statistics.median(ratios):.2f} "
            f"(per round {', '.join(f'{r:.2f}' for r in ratios)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per row at batch 1")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=256, help="tokens per row, batched")
    parser.add_argument("--naive-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TransformerXL(GeneratorConfig(vocab_size=VOCAB, dropout=0.0, **DIMS)).eval()
    reference = NanoGPT(VOCAB, *(DIMS[k] for k in ("d_model", "n_layers", "n_heads", "d_ff")))
    reference.eval()
    window = DIMS["mem_len"] + 1  # the token and mem_len predecessors, as ours
    grammar = synthetic_grammar(VOCAB)
    decoders = {
        "nanoGPT": lambda p, n, g: reference.generate(p, n, window, g),
        "previous": lambda p, n, g: previous_generate(model, p, n, g),
        "ours": lambda p, n, g: model.generate(p, n, generator=g),
        # the same with the token grammar's mask (sampling.grammar): its cost per token
        "ours+grammar": lambda p, n, g: model.generate(p, n, generator=g, grammar=grammar),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"d_model {DIMS['d_model']}, {DIMS['n_layers']} layers, window {DIMS['mem_len']}, "
        f"vocabulary {VOCAB}"
    )
    single = run_rounds(decoders, 1, args.tokens, args.rounds)
    report(f"batch 1, {args.tokens} tokens", single, "nanoGPT")
    batched = run_rounds(decoders, args.batch, args.batch_tokens, args.rounds)
    report(f"batch {args.batch}, {args.batch_tokens} tokens per row", batched, "nanoGPT")

    prompt = torch.zeros(1, 1, dtype=torch.long)
    naive_s, naive = timed(
        lambda: model.generate_naive(
            prompt, args.naive_tokens, generator=torch.Generator().manual_seed(1)
        )
    )
    ours_s, ours = timed(
        lambda: model.generate(
            prompt, args.naive_tokens, generator=torch.Generator().manual_seed(1)
        )
    )
    print(f"\nbatch 1, {args.naive_tokens} tokens against naive recomputation")
    print(f"  naive: {args.naive_tokens / naive_s:9.1f} tokens/s")
    print(f"  ours:  {args.naive_tokens / ours_s:9.1f} tokens/s")
    print(f"  ratio ours / naive: {naive_s / ours_s:.1f} (same tokens: {torch.equal(ours, naive)})")


if __name__ == "__main__":
    main()
