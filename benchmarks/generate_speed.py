"""Generation speed: cached (key/value memory, each step attends to the window only)
against naive generation (recompute the whole sequence for every token), same model, same
seed, same run.

    python benchmarks/generate_speed.py [--tokens 2048]

Prints tokens/s of each and the ratio, and checks both produced the same tokens.
"""

from __future__ import annotations

import argparse
import time

import torch

from cadenza.models.generator import GeneratorConfig, TransformerXL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mem-len", type=int, default=128)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    config = GeneratorConfig(
        vocab_size=466, d_model=args.d_model, n_layers=args.layers, n_heads=4,
        d_ff=4 * args.d_model, seg_len=args.mem_len, mem_len=args.mem_len, dropout=0.0,
    )  # fmt: skip
    model = TransformerXL(config).to(device).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    timings, outputs = {}, {}
    for name, fn in (("cached", model.generate), ("naive", model.generate_naive)):
        generator = torch.Generator(device=device).manual_seed(1)
        started = time.perf_counter()
        outputs[name] = fn(prompt, args.tokens, 1.0, 0, 1.0, generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[name] = time.perf_counter() - started
    same = torch.equal(outputs["cached"], outputs["naive"])
    print(
        f"device {device}; {args.tokens} tokens; d_model {args.d_model}, "
        f"{args.layers} layers, window {args.mem_len}"
    )
    for name, seconds in timings.items():
        print(f"{name:>6}: {seconds:7.2f} s  {args.tokens / seconds:9.1f} tokens/s")
    print(
        f"ratio cached / naive: {timings['naive'] / timings['cached']:.1f}x  (same tokens: {same})"
    )


if __name__ == "__main__":
    main()
