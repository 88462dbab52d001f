"""Muon's cost on this CPU: one optimizer step of the cpu preset's weight matrices, with its
Newton-Schulz iterations in bf16 (torch.optim.Muon's choice) and in fp32 (what
cadenza.training.pretrain.Muon uses where the CPU has no native bf16), each with oneDNN on
and off (off: the slow bf16 path a CPU without AMX / AVX512-BF16 takes), as a ratio of an
AdamW step on the same matrices, measured in the same run.

    python benchmarks/muon_step.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.training.config import PRESETS
from cadenza.training.pretrain import Muon, native_cpu_bf16


def timed(step, seconds: float) -> float:
    step()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    preset = PRESETS["cpu"]
    model = TransformerXL(GeneratorConfig(
        vocab_size=200, d_model=preset.d_model, n_layers=preset.n_layers,
        n_heads=preset.n_heads, d_ff=preset.d_ff, seg_len=preset.seg_len,
        mem_len=preset.mem_len,
    ))  # fmt: skip
    matrices = [p for n, p in model.named_parameters() if p.dim() == 2 and "embedding" not in n]
    for p in matrices:
        p.grad = torch.randn_like(p)
    print(f"native bf16: {native_cpu_bf16()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {len(matrices)} matrices")  # fmt: skip
    adamw = torch.optim.AdamW(matrices, lr=1e-4)
    reference = timed(adamw.step, args.seconds)
    print(f"AdamW step: {reference * 1e3:.1f} ms (the reference)")
    for dtype in (torch.bfloat16, torch.float32):
        for onednn in (True, False):
            with torch.backends.mkldnn.flags(enabled=onednn):
                muon = Muon(matrices, ns_dtype=dtype, lr=1e-4, adjust_lr_fn="match_rms_adamw")
                seconds = timed(muon.step, args.seconds)
            name = f"Muon, Newton-Schulz in {str(dtype).removeprefix('torch.')}"
            print(f"{name}, oneDNN {'on' if onednn else 'off'}: {seconds * 1e3:.1f} ms "
                  f"= {seconds / reference:.1f}x AdamW")  # fmt: skip


if __name__ == "__main__":
    main()
