"""Training throughput: our Transformer-XL generator against a plain reference of the same
width, depth and feed-forward size, measured in the same run.

    python benchmarks/train_throughput.py [--preset cpu|gpu] [--steps N] [--rounds R]
        [--threads N] [--compile | --no-compile] [--cpu-bf16]

References, over segments of seg_len tokens without memory:
- nanoGPT: a nanoGPT-style decoder of the same width, depth, heads and feed-forward size
  with F.scaled_dot_product_attention(is_causal=True), the fast path
  (benchmarks/nanogpt_reference.py): the main reference;
- a stack of torch.nn.TransformerEncoderLayer (pre-norm, causal mask).
All train on random tokens (one BOS every 40 tokens for our document masking) with AdamW
and dropout 0.1 for the same number of steps; rounds alternate the models so a shared box
slows them alike. The script prints the median tokens/s of each (min-max over rounds), the
median per-round ratio ours / nanoGPT, and on CUDA the MFU (6N + attention FLOPs per token
against the bf16 dense peak, 989 TFLOP/s for an H100 SXM). `--compile` on CPU also prints
how long the first compiled steps took. Imports only torch and cadenza.models, so it runs
on a bare GPU box with PYTHONPATH=src.

`--cpu-bf16` (CPU only) adds our model under bf16 autocast (what `pretrain.cpu_bf16`
trains with; native on CPUs with AMX or AVX512-BF16) and prints its ratio to our fp32 model,
measured in the same rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from nanogpt_reference import NanoGPT
from torch import nn

from cadenza.models.generator import GeneratorConfig, TransformerXL, flops_per_token

PRESETS = {  # mirrors params.yaml: pretrain.presets
    "cpu": dict(
        d_model=192, n_layers=4, n_heads=4, d_ff=768, seg_len=128, mem_len=128, batch_size=16
    ),
    "gpu": dict(
        d_model=640, n_layers=12, n_heads=10, d_ff=2560, seg_len=512, mem_len=512, batch_size=32
    ),
}
H100_BF16_PEAK = 989e12


class Reference(nn.Module):
    """Plain decoder-only LM from torch.nn.TransformerEncoderLayer with a causal mask."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, ff: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.position = nn.Embedding(4096, d)
        layer = nn.TransformerEncoderLayer(
            d, heads, ff, dropout=0.1, activation="gelu", batch_first=True, norm_first=True
        )
        self.stack = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, tokens: torch.Tensor, mems=None):
        T = tokens.shape[1]
        h = self.embedding(tokens) + self.position(torch.arange(T, device=tokens.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=tokens.device)
        h = self.stack(h, mask=mask, is_causal=True)
        return F.linear(self.norm(h), self.embedding.weight), None


def make_step(
    model: nn.Module, device: torch.device, compile_model: bool, cpu_bf16: bool = False
):  # fmt: skip
    """One AdamW training step of model on (B, T + 1) tokens, memory carried between calls."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_model = torch.compile(model) if compile_model else model
    if device.type == "cuda":
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    elif cpu_bf16:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()
    mems = None

    def step(tokens: torch.Tensor) -> None:
        nonlocal mems
        with autocast:
            logits, mems = step_model(tokens[:, :-1], mems)
            loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed_steps(step, tokens: torch.Tensor, steps: int, device: torch.device) -> float:
    """Seconds for `steps` steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()  # sync: start the clock with an idle GPU
    started = time.perf_counter()
    for _ in range(steps):
        step(tokens)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="default: gpu on CUDA, else cpu"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=466, help="REMI vocabulary of the Bach corpus")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile every model (default: on CUDA only)",
    )
    parser.add_argument(
        "--cpu-bf16", action="store_true", help="also time our model under CPU bf16 autocast"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    preset = dict(PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")])
    batch = preset.pop("batch_size")
    compile_model = device.type == "cuda" if args.compile is None else args.compile
    config = GeneratorConfig(vocab_size=args.vocab, dropout=0.1, bos_id=1, **preset)
    torch.manual_seed(0)
    dims = (config.d_model, config.n_layers, config.n_heads, config.d_ff)
    models = {
        "nanoGPT (SDPA is_causal=True)": NanoGPT(args.vocab, *dims),
        "nn.TransformerEncoderLayer": Reference(args.vocab, *dims),
        f"ours (Transformer-XL, memory {config.mem_len})": TransformerXL(config),
    }
    tokens = torch.randint(2, args.vocab, (batch, config.seg_len + 1), device=device)
    tokens[:, ::40] = 1  # documents of 40 tokens: our document mask is in play
    steps = {name: make_step(model, device, compile_model) for name, model in models.items()}
    ours_name = list(models)[2]
    bf16_name = "ours, CPU bf16 autocast"
    if args.cpu_bf16 and device.type == "cpu":
        torch.manual_seed(0)
        models[bf16_name] = TransformerXL(config)
        steps[bf16_name] = make_step(models[bf16_name], device, compile_model, cpu_bf16=True)
    warmup = {name: timed_steps(step, tokens, 3, device) for name, step in steps.items()}
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, step in steps.items():
            seconds = timed_steps(step, tokens, args.steps, device)
            speeds[name].append(batch * config.seg_len * args.steps / seconds)
    ours = TransformerXL(config)
    print(
        f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"model: {ours.num_parameters() / 1e6:.2f} M parameters, batch {batch} x seg "
        f"{config.seg_len}, mem {config.mem_len}, compile {compile_model}; "
        f"{args.rounds} rounds of {args.steps} steps"
    )
    for name, values in speeds.items():
        print(
            f"  {name:<36} {statistics.median(values):10,.0f} tokens/s "
            f"(min {min(values):,.0f}, max {max(values):,.0f}); "
            f"first 3 steps {warmup[name]:.1f} s"
        )
    names = list(speeds)
    pairs = [(ours_name, reference) for reference in names[:2]]
    if bf16_name in speeds:
        pairs += [(bf16_name, ours_name), (bf16_name, names[0])]
    for mine, reference in pairs:
        ratios = [a / b for a, b in zip(speeds[mine], speeds[reference], strict=True)]
        label = "ours bf16" if mine == bf16_name else "ours"
        versus = "ours fp32" if reference == ours_name else reference.split(" ")[0]
        print(
            f"ratio {label} / {versus}: {statistics.median(ratios):.2f} "
            f"(per round {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    if device.type == "cuda":
        flops = flops_per_token(config, ours.num_parameters())
        print(
            f"MFU (bf16 peak {H100_BF16_PEAK / 1e12:.0f} TFLOP/s): "
            f"{statistics.median(speeds[names[2]]) * flops / H100_BF16_PEAK:.1%}"
        )


if __name__ == "__main__":
    main()
