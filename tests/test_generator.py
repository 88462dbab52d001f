"""The Transformer-XL generator: memory, cached generation against naive recomputation,
ReZero, tied embeddings, sampling filters."""

from __future__ import annotations

import pytest
import torch

from cadenza.models.generator import GeneratorConfig, TransformerXL
from cadenza.models.sampling import filter_logits, sample_next


def tiny(**overrides) -> TransformerXL:
    torch.manual_seed(0)
    config = dict(
        vocab_size=40, d_model=32, n_layers=2, n_heads=2, d_ff=64, seg_len=8, mem_len=8, dropout=0.0
    )
    return TransformerXL(GeneratorConfig(**{**config, **overrides}))


@pytest.mark.parametrize("rezero", [False, True])
def test_segments_with_memory_equal_one_long_forward(rezero):
    model = tiny(rezero=rezero)
    if rezero:  # leave the zero init so the blocks do something
        for block in model.blocks:
            block.alpha.data.fill_(0.5)
    tokens = torch.randint(0, 40, (3, 32))
    full, _ = model(tokens)
    pieces, mems = [], None
    for start in range(0, 32, 8):
        logits, mems = model(tokens[:, start : start + 8], mems)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert all(m.shape == (3, 8, 32) and not m.requires_grad for m in mems)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 10, 0.9)]
)
def test_cached_generation_equals_naive_recomputation(temperature, top_k, top_p):
    model = tiny()
    prompt = torch.randint(0, 40, (2, 13))  # longer than one segment: read in chunks
    cached = model.generate(prompt, 50, temperature, top_k, top_p, torch.Generator().manual_seed(7))
    naive = model.generate_naive(
        prompt, 50, temperature, top_k, top_p, torch.Generator().manual_seed(7)
    )
    assert torch.equal(cached, naive)
    assert cached.shape == (2, 63)


@pytest.mark.parametrize(("rezero", "mem_len"), [(True, 8), (False, 64)])
def test_ring_buffer_decoding_equals_naive_recomputation(rezero, mem_len):
    """The decode fast path (ring buffer, stacked q/k/v weights, rotation by swapped halves)
    with ReZero residuals, and with a window longer than the whole sample (a ring that
    never wraps), against recomputing the full sequence for every token."""
    model = tiny(rezero=rezero, mem_len=mem_len)
    if rezero:
        for block in model.blocks:
            block.alpha.data.fill_(0.5)
    prompt = torch.randint(0, 40, (2, 3))
    cached = model.generate(prompt, 30, generator=torch.Generator().manual_seed(3))
    naive = model.generate_naive(prompt, 30, generator=torch.Generator().manual_seed(3))
    assert torch.equal(cached, naive)


@pytest.mark.parametrize("prompt_len", [1, 11])
def test_decode_steps_give_the_full_forward_logits(prompt_len):
    """decode_step's logits, token by token past several wraps of the ring (window 8),
    against one full forward pass; weights scaled up so attention is far from uniform."""
    model = tiny().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0 if p.dim() >= 2 else 1.0)
    tokens = torch.randint(0, 40, (2, 40))
    full, _ = model(tokens)
    with torch.no_grad():
        cache = model.empty_cache(2, torch.device("cpu"))
        steps = [model._forward_cached(tokens[:, :prompt_len], cache, 0)[:, -1]]
        state = model.start_decoding(cache, 40)
        for position in range(prompt_len, 40):
            steps.append(model.decode_step(tokens[:, position], position, state))
    torch.testing.assert_close(
        torch.stack(steps, 1), full[:, prompt_len - 1 :], atol=1e-4, rtol=1e-4
    )


def test_batched_generation_equals_one_row_at_a_time():
    """Greedy decoding of a batch gives each row what it gets alone (no row sees another)."""
    model = tiny()
    prompts = torch.randint(0, 40, (3, 5))
    batched = model.generate(prompts, 20, temperature=0.0)
    for row in range(3):
        alone = model.generate(prompts[row : row + 1], 20, temperature=0.0)
        assert torch.equal(batched[row : row + 1], alone)


def test_stop_token_ends_decoding_once_every_row_has_drawn_it(monkeypatch):
    """Each row is the same up to its first stop token as without one, and decoding stops
    when the last row draws it (the rest filled with it)."""
    model, stop = tiny(vocab_size=8), 3
    prompts = torch.randint(0, 8, (16, 4))
    steps = []
    decode_step = model.decode_step
    monkeypatch.setattr(model, "decode_step", lambda *a: steps.append(1) or decode_step(*a))
    full = model.generate(prompts, 200, generator=torch.Generator().manual_seed(5))
    full_steps = len(steps)
    steps.clear()
    early = model.generate(
        prompts, 200, generator=torch.Generator().manual_seed(5), stop_token=stop
    )
    assert early.shape == full.shape
    generated = early[:, 4:]
    assert bool((generated == stop).any(dim=1).all())
    for row_full, row_early in zip(full[:, 4:], generated, strict=True):
        cut = int((row_full == stop).nonzero()[0])
        assert torch.equal(row_early[: cut + 1], row_full[: cut + 1])
    last = max(int((row == stop).nonzero()[0]) for row in full[:, 4:])
    assert bool((generated[:, last + 1 :] == stop).all())
    assert len(steps) == last < full_steps == 199


def test_generates_4096_tokens_reusing_the_cache():
    model = tiny(d_model=16, n_heads=2, d_ff=32, n_layers=1)
    out = model.generate(
        torch.zeros(1, 1, dtype=torch.long), 4100, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (1, 4101)
    assert out.max() < 40


def test_rezero_blocks_start_as_identity_and_embeddings_are_tied():
    model = tiny(rezero=True)
    h = torch.randn(2, 5, 32)
    keys, values = model.blocks[0].attention.project_keys(h, torch.arange(5))
    out = model.blocks[0](h, torch.arange(5), keys, values, torch.arange(5), 8)
    assert torch.equal(out, h)
    assert all(b.alpha.item() == 0.0 for b in model.blocks)
    logits, _ = model(torch.tensor([[1, 2, 3]]))
    logits.sum().backward()
    assert model.embedding.weight.grad is not None
    assert not any("lm_head" in name for name, _ in model.named_parameters())


def test_sampling_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [
        [False, False, True, True, True]
    ]
    probs = logits.softmax(-1)  # ~0.64, 0.24, 0.09, ...
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False, False]] and probs[0, 0] < 0.7
    assert sample_next(logits, temperature=0).item() == 0
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, top_p=0.0)


def test_pitch_nucleus_trims_only_the_pitch_tail():
    """pitch_top_p keeps the smallest set of pitch tokens holding that share of the pitch
    probability; other tokens keep their logits, and a row that allows no pitch is untouched."""
    # tokens 0-1: not pitches; 2-5: pitches with probabilities ~0.64, 0.24, 0.09, 0.03 among pitches
    logits = torch.tensor([[5.0, 1.0, 4.0, 3.0, 2.0, 1.0],
                           [5.0, 1.0, *[float("-inf")] * 4]])  # fmt: skip
    pitches = torch.tensor([False, False, True, True, True, True])
    out = filter_logits(logits, pitch_mask=pitches, pitch_top_p=0.8)
    assert torch.isinf(out[0]).tolist() == [False, False, False, False, True, True]
    assert torch.equal(out[0, :4], logits[0, :4])  # kept tokens: logits as they were
    assert torch.equal(out[1], logits[1]) and not out.isnan().any()
    assert torch.equal(filter_logits(logits, pitch_mask=pitches, pitch_top_p=1.0), logits)
    assert torch.equal(filter_logits(logits, pitch_mask=None, pitch_top_p=0.5), logits)
    # sampled with it, the dropped pitches never come up; the other tokens keep their share
    many = logits[:1].expand(4000, -1)
    drawn = sample_next(many, generator=torch.Generator().manual_seed(0), pitch_mask=pitches,
                        pitch_top_p=0.8)  # fmt: skip
    assert not ((drawn == 4) | (drawn == 5)).any()
    plain_share = logits[0].softmax(-1)[0].item()  # token 0 before trimming: ~0.64
    trimmed = out[0].softmax(-1)[0].item()  # after: a little more (the tail's mass is gone)
    assert trimmed > plain_share
    assert (drawn == 0).float().mean().item() == pytest.approx(trimmed, abs=0.03)
    with pytest.raises(ValueError, match="pitch_top_p"):
        sample_next(logits, pitch_mask=pitches, pitch_top_p=0.0)


def test_detached_memory_path_matches_the_full_forward():
    """The chunked-sampling path (live keys + detached memory, split softmax) against the
    plain full forward pass, token by token, with chunk boundaries every 5 tokens."""
    model = tiny()
    tokens = torch.randint(0, 40, (2, 30))
    full, _ = model(tokens)
    cache = model.empty_cache(2, torch.device("cpu"))
    outputs = []
    for t in range(30):
        outputs.append(model._forward_cached(tokens[:, t : t + 1], cache, t))
        if t % 5 == 4:
            model.detach_cache(cache)
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, atol=1e-5, rtol=1e-5)
    assert all(c["mem_k"].shape[2] == 8 and c["k"].shape[2] == 0 for c in cache)


def test_document_masking_segments_match_and_documents_stand_alone():
    """With bos_id set, a token never attends before its document's BOS: segment-by-segment
    with memory equals the full forward, and a document's logits equal those it gets alone
    (as in generation from [BOS])."""
    torch.manual_seed(0)
    config = GeneratorConfig(
        vocab_size=20, d_model=32, n_layers=2, n_heads=2, d_ff=64, seg_len=8, mem_len=8,
        dropout=0.0, bos_id=1,
    )  # fmt: skip
    model = TransformerXL(config).eval()
    x = torch.randint(3, 20, (2, 24))
    x[0, 5] = x[1, 13] = x[0, 17] = 1
    full, _ = model(x)
    mems, outs = None, []
    for start in range(0, 24, 8):
        out, mems = model(x[:, start : start + 8], mems)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    alone, _ = model(x[1:, 13:])
    torch.testing.assert_close(alone, full[1:, 13:], atol=1e-5, rtol=1e-5)
    unmasked = TransformerXL(GeneratorConfig(**{**config.to_dict(), "bos_id": -1})).eval()
    unmasked.load_state_dict(model.state_dict())
    crossed, _ = unmasked(x)
    assert (crossed[1, 13:] - full[1, 13:]).abs().max() > 1e-3  # the mask does something


def test_bf16_attention_on_cpu_is_the_fused_kernel_in_plain_matmuls(monkeypatch):
    """Under CPU bf16 autocast with no attention dropout the blocks attend by plain matmuls
    (faster there), with documents masked: the logits of the fused kernel in fp32, to bf16
    precision, segment by segment with memory."""
    from cadenza.models import generator

    model = tiny(bos_id=1, attn_dropout=0.0).eval()
    tokens = torch.randint(2, 40, (3, 16))
    tokens[:, 0], tokens[0, 9] = 1, 1  # documents start at BOS
    calls = []
    kernel = generator.F.scaled_dot_product_attention
    monkeypatch.setattr(
        generator.F,
        "scaled_dot_product_attention",
        lambda *a, **k: calls.append(1) or kernel(*a, **k),
    )

    def segments():
        first, mems = model(tokens[:, :8])
        second, _ = model(tokens[:, 8:], mems)
        return torch.cat([first, second], 1).float()

    with torch.no_grad():
        reference = segments()
        assert calls
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = segments()
    assert not calls
    torch.testing.assert_close(plain, reference, atol=0.05, rtol=0.05)
    assert (plain - reference).abs().max() > 0  # bf16 did run
    # a different mask would not pass: the same tokens without documents differ
    other = TransformerXL(GeneratorConfig(**{**model.config.to_dict(), "bos_id": -1}))
    other.load_state_dict(model.state_dict())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        undocumented = torch.cat([other(tokens[:, :8])[0], other(tokens[:, 8:])[0]], 1).float()
    assert (undocumented - reference).abs().max() > 0.1
