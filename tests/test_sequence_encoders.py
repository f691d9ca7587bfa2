"""Sequence encoders (polyrec.layers.sequence): masking, empty histories, batch independence, DIN's attention
by hand, the packed GRU/LSTM against an unpacked reference; and every registered CTR model with a history."""

from __future__ import annotations

import pytest
import torch

import polyrec.models  # noqa: F401  (registers the CTR models)
from helpers import make_batch, make_spec
from polyrec.errors import PolyrecError
from polyrec.layers.sequence import (RecurrentEncoder, SequenceEncoderConfig, TargetAttention, build_sequence_encoder,
                                     oldest_first, resolve_sequence_encoders)
from polyrec.models import MODELS, build_model
from polyrec.train.losses import HeadLosses

D, L = 8, 6
KINDS = ["mean", "din", "gru", "lstm", "bst"]


def inputs(b: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, L, D, generator=g)
    lengths = torch.tensor([0, 1, 3, 6, 2][:b])
    mask = torch.arange(L) < lengths.unsqueeze(1)
    return emb, mask, torch.randn(b, D, generator=g)


def encoder(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_sequence_encoder(SequenceEncoderConfig(kind=kind), D, L).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_padding_is_ignored_empty_is_zero_and_rows_are_independent(kind):
    enc = encoder(kind)
    emb, mask, target = inputs()
    with torch.no_grad():
        out = enc(emb, mask, target)
        noisy = emb.masked_fill(~mask.unsqueeze(-1), 1e3)  # whatever sits at padded positions
        assert torch.allclose(enc(noisy, mask, target), out, atol=1e-5)
        if kind != "bst":  # bst attends from the target: an empty history still has the target position
            assert torch.equal(out[0], torch.zeros(D))
        alone = torch.cat([enc(emb[i:i + 1], mask[i:i + 1], target[i:i + 1]) for i in range(len(emb))])
    assert torch.allclose(alone, out, atol=1e-5)
    assert out.shape == (5, D) and torch.isfinite(out).all()


def test_din_attention_by_hand_without_and_with_softmax():
    att = TargetAttention(2, [3])
    with torch.no_grad():
        for p in att.parameters():
            p.copy_(torch.linspace(-0.5, 0.5, p.numel()).view_as(p))
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    t = torch.tensor([[1.0, 1.0]])
    mask = torch.tensor([[True, True, False]])

    def unit(x):  # Linear(8, 3) -> PReLU(3) -> Linear(3, 1), weights as set above
        w1, b1, a, w2, b2 = [p.detach() for p in att.unit.parameters()]
        z = x @ w1.T + b1
        z = torch.where(z > 0, z, a * z)
        return (z @ w2.T + b2).squeeze(-1)

    scores = torch.stack([unit(torch.cat([h[0, j], t[0], h[0, j] - t[0], h[0, j] * t[0]])) for j in range(2)])
    want = scores[0] * h[0, 0] + scores[1] * h[0, 1]  # no normalisation (DIN), padding weight 0
    assert torch.allclose(att(h, mask, t)[0], want, atol=1e-6)
    att.softmax = True
    w = torch.softmax(scores, 0)
    assert torch.allclose(att(h, mask, t)[0], w[0] * h[0, 0] + w[1] * h[0, 1], atol=1e-6)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_packed_rnn_equals_an_unpacked_reference(kind):
    torch.manual_seed(0)
    enc = RecurrentEncoder(D, kind).eval()
    emb, mask, _ = inputs()
    with torch.no_grad():
        out = enc(emb, mask)
        for i, n in enumerate(mask.sum(1).tolist()):
            if n == 0:
                continue
            seq = emb[i, :n].flip(0).unsqueeze(0)  # newest first -> oldest first, no padding at all
            _, state = enc.rnn(seq)
            h = state[0] if kind == "lstm" else state
            assert torch.allclose(out[i], h[-1, 0], atol=1e-6)


def test_oldest_first_reverses_the_valid_prefix_only():
    x = torch.arange(8.0).view(2, 4, 1)
    out = oldest_first(x, torch.tensor([3, 0]))[..., 0]
    assert out.tolist() == [[2.0, 1.0, 0.0, 3.0], [4.0, 5.0, 6.0, 7.0]]


def history_spec(kind: str):
    spec = make_spec()
    spec.sequence_vocab.update({"hist": 25, "hist__gap": 7})
    spec.sequence_shares["hist"] = "item_id"
    spec.sequence_sides["hist"] = ["hist__gap"]
    spec.sequence_lengths.update({"hist": 5, "hist__gap": 5, "genres": 5})
    spec.sequence_encoders = resolve_sequence_encoders(kind, {}, spec.sequence_fields, ["hist"])
    return spec


WITH_FEATURES = sorted(n for n in MODELS if not MODELS[n].id_only)  # id-only models (svd) read no sequences


@pytest.mark.parametrize("name", WITH_FEATURES)
def test_every_model_trains_with_a_history(name):
    """Each registered model with a history field (the encoder kind rotates over the models so all are
    covered): finite loss and gradients, the history's encoder gets a gradient, a batch of one works."""
    kind = KINDS[WITH_FEATURES.index(name) % len(KINDS)]
    spec = history_spec(kind)
    torch.manual_seed(0)
    model = build_model(name, spec, 8, {})
    batch, labels = make_batch(spec, 16, seed=1)
    model.train()
    logits = model(batch)
    loss = HeadLosses(model.heads, spec.task_names)(logits, labels).sum()
    loss.backward()
    assert torch.isfinite(loss)
    table = [m for m in model.modules() if hasattr(m, "seq_names")]
    assert table and "hist" in table[0].seq_names and "hist__gap" not in table[0].seq_names
    if kind != "mean":
        enc = table[0].seq_encoders[table[0].seq_names.index("hist")]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    model.eval()
    one, _ = make_batch(spec, 1, seed=2)
    assert torch.isfinite(model(one)).all()


def test_encoder_config_errors():
    spec = make_spec()
    with pytest.raises(PolyrecError, match="not sequence fields"):
        resolve_sequence_encoders("din", {"hist": SequenceEncoderConfig(kind="din")}, spec.sequence_fields, [])
    spec.sequence_encoders = {"genres": {"kind": "din"}}  # genres has no candidate to attend from
    with pytest.raises(PolyrecError, match="needs a target"):
        build_model("mmoe", spec, 8, {})
