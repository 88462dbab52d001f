"""Before/after: this tree's generator against another version of models/generator.py, in
one process, with the same weights, inputs and seeds, rounds alternating.

    git show main:src/cadenza/models/generator.py > /tmp/generator_main.py
    python benchmarks/compare_generator.py /tmp/generator_main.py [--rounds 6] [--threads N]

Prints, for the cpu preset (document masking on, dropout 0.1): the largest logit difference
of the two in eval mode over two segments with memory, training tokens/s of each (AdamW
steps) and generation tokens/s at batch 1 and batch 64, with the median per-round ratio
(this tree / other) and whether both sampled the same tokens.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from cadenza.models import generator as this

CONFIG = dict(
    vocab_size=466, d_model=192, n_layers=4, n_heads=4, d_ff=768, seg_len=128, mem_len=128,
    dropout=0.1, bos_id=1,
)  # fmt: skip


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("other_generator", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["other_generator"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def train_step(model, tokens: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mems = None

    def step() -> None:
        nonlocal mems
        logits, mems = model(tokens[:, :-1], mems)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def decode(model, batch: int, num_tokens: int, samples: list) -> None:
    """Sample from [BOS]-like token 1; the n-th call of a model uses seed n."""
    prompt = torch.ones(batch, 1, dtype=torch.long)
    generator = torch.Generator().manual_seed(len(samples))
    samples.append(model.generate(prompt, num_tokens, generator=generator))


def alternate(fns: dict, rounds: int, work: int) -> dict[str, list[float]]:
    """units of work per second of each function, per round, the functions alternating."""
    speeds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            speeds[name].append(work / (time.perf_counter() - started))
    return speeds


def report(title: str, speeds: dict[str, list[float]]) -> None:
    ratios = [a / b for a, b in zip(speeds["this"], speeds["other"], strict=True)]
    print(
        f"{title}: other {statistics.median(speeds['other']):,.0f} tokens/s, this "
        f"{statistics.median(speeds['this']):,.0f} tokens/s; ratio this / other "
        f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}, "
        f"n={len(ratios)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", help="path of another version of models/generator.py")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    other = load_module(args.other)
    torch.manual_seed(0)
    models = {"other": other.TransformerXL(other.GeneratorConfig(**CONFIG))}
    models["this"] = this.TransformerXL(this.GeneratorConfig(**CONFIG))
    models["this"].load_state_dict(models["other"].state_dict())
    tokens = torch.randint(2, CONFIG["vocab_size"], (16, 2 * CONFIG["seg_len"] + 1))
    tokens[:, ::40] = 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    with torch.no_grad():
        outputs = {}
        for name, model in models.items():
            model.eval()
            first, mems = model(tokens[:, :128])
            outputs[name] = torch.cat([first, model(tokens[:, 128:256], mems)[0]], dim=1)
    difference = (outputs["this"] - outputs["other"]).abs().max()
    print(f"max |logit difference|, eval, 2 segments: {difference:.2e}")

    for model in models.values():
        model.train()
    steps = {name: train_step(model, tokens[:, :129]) for name, model in models.items()}
    alternate(steps, 1, 1)  # warm-up
    report("training, batch 16 x 128", alternate(steps, args.rounds, 16 * 128))

    models["this"].load_state_dict(models["other"].state_dict())  # training set them apart
    for batch, num_tokens in ((1, 512), (64, 256)):
        samples: dict[str, list] = {name: [] for name in models}
        fns = {
            name: functools.partial(decode, models[name], batch, num_tokens, samples[name])
            for name in models
        }
        speeds = alternate(fns, args.rounds, batch * num_tokens)
        report(f"generation, batch {batch} x {num_tokens}", speeds)
        pairs = zip(samples["this"], samples["other"], strict=True)
        print(f"  same tokens: {all(torch.equal(a, b) for a, b in pairs)}")


if __name__ == "__main__":
    main()
