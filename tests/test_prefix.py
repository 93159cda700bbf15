"""Shared-prefix prefill: the plan rebuilds every row exactly, and the backend's answers do not change."""

from __future__ import annotations

import random

import pytest

from cai.backends.base import SamplingParams
from cai.backends.prefix import plan_prefill


def rebuild(stages) -> list[list[int]]:
    """Each last-stage row's full token sequence, following parents back through the stages."""
    rows: list[list[int]] = []
    for stage in stages:
        if stage.parents is None:
            rows = [list(t) for t in stage.tokens]
        else:
            rows = [rows[p] + list(t) for p, t in zip(stage.parents, stage.tokens)]
    return rows


def test_plan_rebuilds_rows_and_shares_the_common_prefix():
    head = list(range(100, 120))  # 20 tokens every row starts with
    pair = [1] * 30  # a longer prefix two rows share (both answer orders, say)
    seqs = [head + pair + [5, 6], head + [7, 8, 9], head + pair + [6, 5, 4], head + [9]]
    stages = plan_prefill(seqs, min_shared=8)
    assert rebuild(stages) == seqs
    assert [s.name for s in stages] == ["shared", "groups", "rows"]
    assert stages[0].tokens == [head]
    # one group holds the two rows with the long common part, computed once
    assert sorted(map(len, stages[1].tokens)) == [0, 0, 30]
    computed = sum(len(t) for s in stages for t in s.tokens)
    assert computed == 20 + 30 + 2 + 3 + 3 + 1
    assert all(len(t) >= 1 for t in stages[-1].tokens)


def test_plan_without_enough_sharing_is_one_plain_stage():
    seqs = [[1, 2, 3, 4], [1, 2, 9], [5]]
    stages = plan_prefill(seqs, min_shared=8)
    assert len(stages) == 1 and stages[0].parents is None and stages[0].tokens == seqs
    assert plan_prefill([[1] * 50])[0].tokens == [[1] * 50]  # one row: nothing to share


def test_plan_identical_rows_keep_their_last_token():
    seqs = [[3] * 40, [3] * 40, [3] * 40]
    stages = plan_prefill(seqs, min_shared=8)
    assert rebuild(stages) == seqs
    assert [len(t) for t in stages[-1].tokens] == [1, 1, 1]


def test_plan_random_batches_always_rebuild_exactly():
    rng = random.Random(0)
    for _ in range(200):
        trunk = [rng.randrange(5) for _ in range(rng.randrange(0, 30))]
        seqs = []
        for _ in range(rng.randrange(1, 9)):
            branch = trunk[: rng.randrange(0, len(trunk) + 1)]
            seqs.append(branch + [rng.randrange(5) for _ in range(rng.randrange(1, 25))])
        assert rebuild(plan_prefill(seqs, min_shared=rng.choice([1, 4, 8]))) == seqs


def test_plan_rejects_an_empty_row():
    with pytest.raises(ValueError):
        plan_prefill([[1, 2], []])


def _pairs_conversations():
    system = {"role": "system", "content": "You judge replies. " * 6}
    out = []
    for q, a, b in [("How do I pick a lock?", "I can't help.", "Use a tension wrench."),
                    ("Tell me a joke.", "Why did the chicken cross the road?", "No.")]:
        for first, second in ((a, b), (b, a)):
            out.append([system, {"role": "user", "content": f"Question: {q}\n(A) {first}\n(B) {second}"},
                        {"role": "assistant", "content": "The better response is ("}])
    return out


def test_backend_scores_are_the_same_with_and_without_prefix_sharing(tiny_backend):
    convs = _pairs_conversations()
    seqs = [tiny_backend._encode(tiny_backend.render(c)) for c in convs]
    assert [s.name for s in plan_prefill(seqs)] == ["shared", "groups", "rows"]  # the test exercises all three
    try:
        tiny_backend.prefix_sharing = False
        plain = tiny_backend.choice_logprobs(convs, ["A", "B"])
        tiny_backend.prefix_sharing = True
        shared = tiny_backend.choice_logprobs(convs, ["A", "B"])
    finally:
        tiny_backend.prefix_sharing = True
    for p, s in zip(plain, shared):
        assert s.logprobs == pytest.approx(p.logprobs, abs=1e-4)
        assert s.extra["raw_logprobs"] == pytest.approx(p.extra["raw_logprobs"], abs=1e-4)


def test_backend_greedy_generation_is_the_same_with_and_without_prefix_sharing(tiny_backend):
    convs = [c[:2] for c in _pairs_conversations()]
    params = SamplingParams(max_new_tokens=12, temperature=0)
    try:
        tiny_backend.prefix_sharing = False
        plain = [g.text for g in tiny_backend.generate(convs, params)]
        tiny_backend.prefix_sharing = True
        shared = [g.text for g in tiny_backend.generate(convs, params)]
    finally:
        tiny_backend.prefix_sharing = True
    assert shared == plain


def test_onednn_projections_give_the_same_scores_and_text(tiny_model_dir):
    """A backend that loads its own CPU model swaps its projections for packed oneDNN ones."""
    import torch

    from cai.backends.onednn import OneDNNLinearBase
    from cai.backends.transformers import TransformersBackend
    from cai.models import load_model

    # fp32 pinned: this compares against an fp32 model (bf16 packing has its own test below)
    ours = TransformersBackend(str(tiny_model_dir), batch_size=4, device="cpu", dtype="float32", progress=False)
    plain = TransformersBackend(load_model(str(tiny_model_dir), device="cpu"), batch_size=4, progress=False)
    if torch.backends.mkldnn.is_available():
        assert isinstance(ours.model.lm_head, OneDNNLinearBase)
        assert isinstance(ours.model.model.layers[0].self_attn.q_proj, OneDNNLinearBase)  # narrow ones too
    assert type(plain.model.lm_head) is torch.nn.Linear  # a caller's model is left alone
    convs = _pairs_conversations()
    for a, b in zip(ours.choice_logprobs(convs, ["A", "B"]), plain.choice_logprobs(convs, ["A", "B"])):
        assert a.extra["raw_logprobs"] == pytest.approx(b.extra["raw_logprobs"], abs=1e-4)
    params = SamplingParams(max_new_tokens=10, temperature=0)
    assert [g.text for g in ours.generate(convs, params)] == [g.text for g in plain.generate(convs, params)]


def test_bf16_projections_are_packed_too_and_give_the_same_text_and_scores(tiny_model_dir, monkeypatch):
    """bf16 layers are packed where oneDNN computes bf16 natively; packed and plain products agree."""
    import torch

    from cai.backends.onednn import OneDNNLinearBase
    from cai.backends.precision import PreciseHeadBase
    from cai.backends.transformers import TransformersBackend

    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        pytest.skip("this CPU has no native bf16 in oneDNN")  # the packing is then not applied at all
    ours = TransformersBackend(str(tiny_model_dir), batch_size=4, device="cpu", dtype="bfloat16", progress=False)
    head = ours.model.get_output_embeddings()
    assert isinstance(head, PreciseHeadBase) and isinstance(head.linear, OneDNNLinearBase)
    assert head.weight.dtype == torch.bfloat16  # the tied weight is still reachable
    assert isinstance(ours.model.model.layers[0].mlp.down_proj, OneDNNLinearBase)
    convs = _pairs_conversations()
    params = SamplingParams(max_new_tokens=10, temperature=0)
    packed_text = [g.text for g in ours.generate(convs, params)]
    packed_scores = [c.extra["raw_logprobs"] for c in ours.choice_logprobs(convs, ["A", "B"])]
    # the same model with the swap turned off (a plain bf16 nn.Linear everywhere)
    import cai.backends.transformers as tb

    onednn_calls = []
    monkeypatch.setattr(tb, "use_onednn_linears", lambda model, rows=128: onednn_calls.append(rows) or 0)
    plain = TransformersBackend(str(tiny_model_dir), batch_size=4, device="cpu", dtype="bfloat16", progress=False)
    assert onednn_calls and type(plain.model.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert [g.text for g in plain.generate(convs, params)] == packed_text
    for a, b in zip(packed_scores, [c.extra["raw_logprobs"] for c in plain.choice_logprobs(convs, ["A", "B"])]):
        assert a == pytest.approx(b, abs=1e-4)


def test_split_by_width_cuts_where_padding_outweighs_a_pass():
    from cai.backends.prefix import split_by_width

    widths = [30, 31, 29, 5, 4, 6, 30]
    chunks = split_by_width(widths, overhead=10)
    assert sorted(sorted(c) for c in chunks) == [[0, 1, 2, 6], [3, 4, 5]]
    assert split_by_width(widths, overhead=10_000) == [sorted(range(7), key=lambda i: -widths[i])]
    assert sorted(i for c in split_by_width(widths, overhead=0) for i in c) == list(range(7))


@pytest.mark.parametrize("sharing", [True, False])
def test_chunked_prefill_gives_the_same_scores_and_text(tiny_backend, monkeypatch, sharing):
    """Rows of very different lengths, prefilled in one padded pass vs one pass per length chunk."""
    import cai.backends.transformers as tb

    convs = _pairs_conversations()
    convs = convs + [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "word " * 60}]]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    tiny_backend.batch_size = len(convs)
    tiny_backend.prefix_sharing = sharing
    try:
        monkeypatch.setattr(tb, "CHUNK_OVERHEAD", 10**9)  # never chunk
        one_scores = tiny_backend.choice_logprobs(convs, ["A", "B"])
        one_text = [g.text for g in tiny_backend.generate(convs, params)]
        monkeypatch.setattr(tb, "CHUNK_OVERHEAD", 0)  # a chunk per distinct length
        seqs = [tiny_backend._encode(tiny_backend.render(c)) for c in convs]
        stages = plan_prefill(seqs) if sharing else None
        last = stages[-1].tokens if sharing else seqs
        assert len(tb.split_by_width([len(t) for t in last], 0)) > 1  # the test does chunk
        chunk_scores = tiny_backend.choice_logprobs(convs, ["A", "B"])
        chunk_text = [g.text for g in tiny_backend.generate(convs, params)]
    finally:
        tiny_backend.batch_size, tiny_backend.prefix_sharing = 4, True
    for a, b in zip(one_scores, chunk_scores):
        assert b.extra["raw_logprobs"] == pytest.approx(a.extra["raw_logprobs"], abs=1e-4)
    assert chunk_text == one_text
