"""Adversarial-phase cost: a generator step with the adversarial term (plus the critic's
updates) against an NLL-only step measured in the same run, amortized over the cadence
(`adv_every`); and autograd's peak saved memory against the number of chunks a sample is
generated in.

    python benchmarks/adversarial_step.py [--steps 3] [--params params.yaml]

Settings (sample_batch, sample_len, chunk_len, prime_tokens, adv_every,
critic_steps, batch_size) come from params.yaml's adversarial section; model sizes mirror the
cpu presets (generator d_model 192 x 4 layers, discriminator 128 x 3 layers). Random weights:
only time and memory are meaningful. The aim (issue 12): amortized ratio <= 4x.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cadenza.config import load_settings
from cadenza.models.discriminator import Discriminator, DiscriminatorConfig
from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.models.gumbel import sample_chunks
from cadenza.training import adversarial as adv
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
        DiscriminatorConfig(
            VOCAB, d_model=128, n_layers=3, n_heads=4, d_ff=512, max_len=256, local_bias=True
        )
    )
    return generator, discriminator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    settings = load_settings(args.params).adversarial
    config = settings.loop_config()
    generator, discriminator = build()
    device = torch.device("cpu")
    rng = np.random.default_rng(0)
    corpus = rng.integers(4, VOCAB, 200_000)
    offsets = np.arange(0, len(corpus) + 1, 1000)
    real = adv.RealChunks(corpus, offsets, config.prime_tokens + config.sample_len, 0)
    sampler = adv.Sampler(generator, real, config, device, torch.Generator().manual_seed(0), 1)
    critic = adv.Critic(discriminator, config)
    update = adv.GeneratorUpdate(generator, config)
    seg = 128
    tokens = torch.from_numpy(
        corpus[: config.batch_size * (seg + 1)].reshape(config.batch_size, seg + 1)
    )

    def nll_step() -> None:
        update.step(tokens[:, :-1], tokens[:, 1:], None, None)

    def adversarial_step() -> None:
        update.step(
            tokens[:, :-1], tokens[:, 1:], None,
            lambda: adv.adversarial_loss_backward(critic, sampler, config, 0.5),
        )  # fmt: skip
        for _ in range(config.critic_steps):
            adv.discriminator_step(critic, sampler, 0.5)

    timings = {}
    for name, step in (("nll", nll_step), ("adversarial", adversarial_step), ("nll2", nll_step)):
        step()  # warm-up
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        timings[name] = (time.perf_counter() - started) / args.steps
    nll = (timings["nll"] + timings["nll2"]) / 2  # before and after: drift shows
    k = config.adv_every
    amortized = (timings["adversarial"] + (k - 1) * nll) / k
    print(
        f"batch {config.batch_size} x {seg} (NLL); {config.sample_batch} samples x "
        f"{config.sample_len} tokens in chunks of {config.chunk_len}, primed with "
        f"{config.prime_tokens}; critic {config.critic}, critic_steps {config.critic_steps}; "
        "adv_optimizer "
        f"{config.adv_optimizer}; adv_every {k}; torch threads {torch.get_num_threads()}"
    )
    print(f"NLL step (reference):      {nll:7.3f} s  (before {timings['nll']:.3f}, after "
          f"{timings['nll2']:.3f})")  # fmt: skip
    print(f"adversarial step:          {timings['adversarial']:7.3f} s  "
          f"({timings['adversarial'] / nll:.1f}x an NLL step)")  # fmt: skip
    print(f"amortized over adv_every {k}: {amortized:7.3f} s per step")
    print(f"ratio amortized / NLL: {amortized / nll:.1f}x (aim <= 4x)")

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


if __name__ == "__main__":
    main()
