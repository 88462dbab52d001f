"""One attention forward + backward at the default cpu model's training shapes: the fused
kernel (`scaled_dot_product_attention`) against plain matmuls, bf16 and fp32, with and
without dropout on the probabilities, in one process, rounds alternating.

    python benchmarks/attention_kernel.py [--reps 20] [--rounds 2]

Prints milliseconds per forward + backward for each, and per dtype and dropout the ratio
plain / fused (below 1: plain matmuls are faster). The cpu presets train without attention
dropout and, under CPU bf16, attend by plain matmuls (models/generator.py; EXPERIMENTS.md,
"Attention dropout").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# batch, heads, queries (seg_len), keys (memory + segment), head width: the cpu presets
B, H, T, TK, D = 16, 4, 128, 256, 48


def window_mask() -> torch.Tensor:
    """(B, 1, T, TK): each query sees itself and the 127 keys before it (memory first)."""
    query = torch.arange(T)[:, None] + (TK - T)
    key = torch.arange(TK)[None]
    return ((key <= query) & (key > query - T))[None, None].expand(B, 1, T, TK).clone()


def fused(q, k, v, mask, dropout):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


def plain(q, k, v, mask, dropout):
    scores = (q @ k.transpose(-2, -1)) * D**-0.5
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return F.dropout(weights, dropout, training=True) @ v


def milliseconds(function, dtype, dropout, mask, reps: int) -> float:
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(B, H, n, D, dtype=dtype, requires_grad=True) for n in (T, TK, TK)
    )  # fmt: skip
    for _ in range(3):
        function(q, k, v, mask, dropout).float().sum().backward()
    started = time.perf_counter()
    for _ in range(reps):
        function(q, k, v, mask, dropout).float().sum().backward()
    return (time.perf_counter() - started) / reps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="forward + backward per timing")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    args = parser.parse_args()
    if args.reps < 1 or args.rounds < 1:
        parser.error("--reps and --rounds must be at least 1")
    mask = window_mask()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; shapes B{B} H{H} "
          f"T{T} keys{TK} D{D}; ms per forward + backward")  # fmt: skip
    for dtype in (torch.bfloat16, torch.float32):
        for dropout in (0.1, 0.0):
            times: dict[str, list[float]] = {"fused": [], "plain": []}
            for _ in range(args.rounds):
                for name, function in (("fused", fused), ("plain", plain)):
                    times[name].append(milliseconds(function, dtype, dropout, mask, args.reps))
            ratio = statistics.median(
                p / f for p, f in zip(times["plain"], times["fused"], strict=True)
            )
            cells = ", ".join(
                f"{name} {' / '.join(f'{t:.1f}' for t in values)}" for name, values in times.items()
            )
            print(f"{str(dtype).removeprefix('torch.'):9s} dropout {dropout}: {cells}; "
                  f"plain / fused {ratio:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
