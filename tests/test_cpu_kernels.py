"""cai's compiled decode-attention kernel (backends/csrc/decode_attention.cpp) against the torch path."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")


def _kernel():
    from cai.backends.cpu_kernels import decode_attention_kernel, why_not

    reason = why_not()
    if reason:  # a real absence on this machine (e.g. an AVX2-only CPU): the torch path is all there is
        pytest.skip(f"the kernel cannot be built here: {reason}")
    kernel = decode_attention_kernel()
    assert kernel is not None, "why_not() found nothing missing, yet the build failed (see the log)"
    return kernel


def _case(dtype, groups=3, dim=64, batch=6, kv_heads=2, capacity=21, length=13, prefix=9, seed=0):
    """Query, buffers with a zero free tail, an optional shared prefix and a mask with left padding and a hole."""
    from cai.backends.decode_attention import additive_mask

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, kv_heads * groups, dim, generator=g)
    k = torch.randn(batch, kv_heads, capacity, dim, generator=g)
    v = torch.randn(batch, kv_heads, capacity, dim, generator=g)
    k[:, :, length:] = 0
    v[:, :, length:] = 0
    pre = None
    if prefix:
        pre = (torch.randn(1, kv_heads, prefix, dim, generator=g), torch.randn(1, kv_heads, prefix, dim, generator=g))
    attends = torch.ones(batch, prefix + length, dtype=torch.bool)
    attends[0, prefix : prefix + 4] = False  # left padding of the rows' own part
    attends[2, prefix + 6] = False  # a hole between prefill stages
    mask = additive_mask(attends, prefix + length, prefix + capacity)
    cast = (lambda t: t.to(dtype))
    return cast(q), cast(k), cast(v), None if pre is None else (cast(pre[0]), cast(pre[1])), mask


@pytest.mark.parametrize("groups,dim,prefix", [(3, 64, 9), (3, 64, 0), (1, 64, 5), (4, 128, 7), (2, 128, 0)])
def test_kernel_matches_the_bmm_path_in_fp32(groups, dim, prefix):
    from cai.backends.decode_attention import attend, attend_bmm

    kernel = _kernel()
    assert kernel.supports(groups, dim)
    q, k, v, pre, mask = _case(torch.float32, groups, dim, prefix=prefix)
    ref = attend_bmm(q, k, v, pre, mask, 0.3)
    ours = attend(q, k, v, pre, mask, 0.3)
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_kernel_in_bf16_is_at_least_as_close_to_fp32_as_the_bmm_path():
    from cai.backends.decode_attention import attend, attend_bmm

    _kernel()
    q, k, v, pre, mask = _case(torch.float32, capacity=150, length=120, prefix=60, batch=8)
    exact = attend_bmm(q, k, v, pre, mask, 0.125)
    bf = [t.bfloat16() for t in (q, k, v, *pre)]
    ours = attend(bf[0], bf[1], bf[2], (bf[3], bf[4]), mask, 0.125)
    theirs = attend_bmm(bf[0], bf[1], bf[2], (bf[3], bf[4]), mask, 0.125)
    assert ours.dtype == torch.bfloat16
    ours_err = (ours.float() - exact).abs().mean()
    theirs_err = (theirs.float() - exact).abs().mean()
    # the kernel keeps scores and weights in fp32; the bmm path rounds both to bf16
    assert ours_err <= theirs_err, (ours_err, theirs_err)
    assert (ours.float() - exact).abs().max() < 0.05


def test_kernel_does_not_read_the_free_tail_or_masked_positions():
    from cai.backends.decode_attention import attend

    _kernel()
    q, k, v, pre, mask = _case(torch.float32, prefix=0, length=13, capacity=21)
    clean = attend(q, k, v, None, mask, 0.3)
    k[:, :, 13:] = float("nan")  # past the length: never attended
    v[:, :, 13:] = float("nan")
    v[0, :, :4] = float("nan")  # row 0's left padding: weight 0
    out = attend(q, k, v, None, mask, 0.3)
    assert torch.isfinite(out).all()
    assert torch.equal(out, clean)


def test_unsupported_shapes_and_layouts_take_the_bmm_path():
    from cai.backends.decode_attention import _kernel as kernel_for

    kernel = _kernel()
    q, k, v, pre, mask = _case(torch.float32, groups=3, dim=64)
    assert kernel_for(q, k, v, pre, 3) is kernel
    assert not kernel.supports(5, 64) and not kernel.supports(3, 32)
    q5, k5, v5, _, _ = _case(torch.float32, groups=5, dim=64, prefix=0)
    assert kernel_for(q5, k5, v5, None, 5) is None
    assert kernel_for(q, k.transpose(2, 3).contiguous().transpose(2, 3), v, pre, 3) is None  # strided keys
    assert kernel_for(q.half(), k.half(), v.half(), None, 3) is None  # fp16: not built for it


def test_reasons_it_is_not_used(monkeypatch, tmp_path):
    from cai.backends import cpu_kernels

    monkeypatch.setenv("CAI_CPU_KERNELS", "0")
    assert cpu_kernels.why_not() == "CAI_CPU_KERNELS=0"
    monkeypatch.delenv("CAI_CPU_KERNELS")
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n")
    monkeypatch.setattr(cpu_kernels, "CPUINFO", fake)
    if cpu_kernels.why_not() is not None:  # off x86-64 the machine check answers first
        assert "avx512f" in cpu_kernels.why_not() or "x86-64" in cpu_kernels.why_not()


def test_a_failed_build_falls_back_with_one_warning(monkeypatch, caplog, tmp_path):
    import torch.utils.cpp_extension as ext

    from cai.backends import cpu_kernels

    if cpu_kernels.why_not():
        pytest.skip(cpu_kernels.why_not())

    def broken(**kwargs):
        raise RuntimeError("Error building extension 'cai_decode_attention': c++ exited 1")

    monkeypatch.setattr(ext, "load", broken)
    monkeypatch.setenv("CAI_CACHE_DIR", str(tmp_path))
    cpu_kernels.decode_attention_kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="cai.backends.cpu_kernels"):
            assert cpu_kernels.decode_attention_kernel() is None
        # the one-time "compiling" notice (nothing built in this cache yet), then the failure, once
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2 and "compiling" in messages[0], messages
        assert "building decode_attention.cpp failed" in messages[1]
        from cai.backends.decode_attention import attend, attend_bmm

        q, k, v, pre, mask = _case(torch.float32)
        assert torch.equal(attend(q, k, v, pre, mask, 0.3), attend_bmm(q, k, v, pre, mask, 0.3))
    finally:
        cpu_kernels.decode_attention_kernel.cache_clear()


def test_a_prefix_longer_than_the_rows_own_buffer_stays_on_the_bmm_path():
    from cai.backends.decode_attention import attend, attend_bmm

    _kernel()
    # the bmm path multiplies a long prefix once for all rows; the kernel would read it per row
    q, k, v, pre, mask = _case(torch.float32, capacity=21, length=13, prefix=30)
    assert torch.equal(attend(q, k, v, pre, mask, 0.3), attend_bmm(q, k, v, pre, mask, 0.3))
    q, k, v, pre, mask = _case(torch.float32, capacity=21, length=13, prefix=20)
    assert not torch.equal(attend(q, k, v, pre, mask, 0.3), attend_bmm(q, k, v, pre, mask, 0.3))  # the kernel's sums


def test_no_compiler_or_ninja_is_a_reason_not_an_error(monkeypatch, tmp_path):
    import shutil
    import sys

    import torch.utils.cpp_extension as ext

    from cai.backends import cpu_kernels

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    monkeypatch.setattr(cpu_kernels, "CPUINFO", fake)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cpu_kernels.why_not() == "no C++ compiler (c++ or g++ on PATH, or CXX)"
    monkeypatch.setenv("CXX", "/usr/bin/g++")
    monkeypatch.setattr(ext, "is_ninja_available", lambda: False)
    monkeypatch.setitem(sys.modules, "ninja", None)  # the wheel is not installed either
    assert cpu_kernels.why_not() == "ninja is not installed (pip install ninja)"
    # and the kernel is then simply not there: callers take the bmm path
    cpu_kernels.decode_attention_kernel.cache_clear()
    try:
        assert cpu_kernels.decode_attention_kernel() is None
    finally:
        cpu_kernels.decode_attention_kernel.cache_clear()
