"""Adversarial step cost: one generator update with NLL + adversarial loss against an NLL-only
update at the same batch, same run; and autograd's peak saved memory against the number of
chunks a sample is generated in.

    python benchmarks/adversarial_step.py [--steps 3]

Model sizes mirror the cpu presets in params.yaml (generator d_model 192 x 4 layers,
discriminator d_model 128 x 3 layers); random weights, so only time and memory are meaningful.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from cadenza.models.discriminator import Discriminator, DiscriminatorConfig
from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.models.gumbel import sample_chunks
from cadenza.training.adversarial import AdversarialConfig, RealChunks, adversarial_generator_step
from cadenza.training.memory import SavedTensorMeter

VOCAB = 466


def build(seed: int = 0):
    torch.manual_seed(seed)
    generator = TransformerXL(
        GeneratorConfig(
            VOCAB, d_model=192, n_layers=4, n_heads=4, d_ff=768, seg_len=128, mem_len=128
        )
    )
    discriminator = Discriminator(
        DiscriminatorConfig(VOCAB, d_model=128, n_layers=3, n_heads=4, d_ff=512, max_len=256)
    )
    return generator, discriminator


def nll_step(generator, optimizer, tokens: torch.Tensor) -> None:
    logits, _ = generator(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sample-len", type=int, default=128)
    parser.add_argument("--chunk-len", type=int, default=64)
    args = parser.parse_args()
    generator, discriminator = build()
    optimizer = torch.optim.AdamW(generator.parameters(), lr=1e-5)
    rng = np.random.default_rng(0)
    corpus = rng.integers(4, VOCAB, 200_000)
    offsets = np.arange(0, len(corpus) + 1, 1000)
    tokens = torch.from_numpy(corpus[: args.batch * 129].reshape(args.batch, 129).astype(np.int64))
    config = AdversarialConfig(
        sample_batch=args.batch, sample_len=args.sample_len, chunk_len=args.chunk_len
    )
    real = RealChunks(corpus, offsets, args.sample_len, 0)
    sampler = torch.Generator().manual_seed(0)

    def adversarial_step() -> None:
        nll_step(generator, optimizer, tokens)  # the same NLL term, then the adversarial part
        generator.eval()
        adversarial_generator_step(
            generator, discriminator, real, config, 0.5, torch.device("cpu"), sampler, 1
        )
        generator.train()
        optimizer.step()

    timings = {}
    for name, step in (
        ("nll", lambda: nll_step(generator, optimizer, tokens)),
        ("adversarial", adversarial_step),
    ):
        step()  # warm-up
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        timings[name] = (time.perf_counter() - started) / args.steps
    print(f"batch {args.batch}; sample {args.sample_len} tokens in chunks of {args.chunk_len}")
    print(f"NLL step (reference): {timings['nll']:7.2f} s")
    print(f"NLL + adversarial:    {timings['adversarial']:7.2f} s")
    print(f"ratio adversarial / NLL: {timings['adversarial'] / timings['nll']:.1f}x")

    print("\npeak saved-for-backward memory (autograd), sample of n chunks x 32 tokens, batch 4:")
    prompt = torch.ones(4, 1, dtype=torch.long)
    base = None
    for num_chunks in (1, 2, 4, 8):
        with SavedTensorMeter() as meter:
            for chunk, _ in sample_chunks(
                generator, prompt, num_chunks, 32, 0.5, torch.Generator().manual_seed(0)
            ):
                discriminator.score(chunk).mean().backward()
        base = base or meter.peak
        line = (
            f"  {num_chunks} chunk(s) ({num_chunks * 32:4d} tokens): {meter.peak / 2**20:7.1f} MiB"
        )
        print(f"{line}  ({meter.peak / base:.2f}x one chunk)")
    with SavedTensorMeter() as meter:
        for chunk, _ in sample_chunks(
            generator, prompt, 1, 256, 0.5, torch.Generator().manual_seed(0)
        ):
            discriminator.score(chunk).mean().backward()
    line = f"  1 chunk of 256 tokens (no chunking): {meter.peak / 2**20:7.1f} MiB"
    print(f"{line}  ({meter.peak / base:.2f}x)")


if __name__ == "__main__":
    main()
