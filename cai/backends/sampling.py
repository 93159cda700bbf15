"""Sampling and memory helpers of the transformers backend's own decode loop."""

from __future__ import annotations

import functools

@functools.cache
def keep_freed_memory() -> None:
    """Let glibc keep freed large blocks for reuse instead of returning them to the OS.

    By default every block over 128 KiB is unmapped on free, so each decode step's
    fresh logits (25 MB at batch 128) and activations page-fault in again. Raising
    the mmap and trim thresholds took generation on the embedded default from about
    218 to 250 tok/s on the 2-core CPU (benchmarks/generation.py). Process-wide, once;
    glibc only; ``CAI_MALLOC_TUNING=0`` leaves malloc alone.
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("CAI_MALLOC_TUNING") == "0":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...)
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's upper bound for this setting
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_top_pad, 64 << 20)


def return_freed_memory() -> None:
    """Give the memory glibc keeps after `keep_freed_memory` back to the OS (``malloc_trim``).

    Between a run's stages: a training stage after generation would otherwise start on
    top of the generation's freed blocks, and its own freed activations would stay
    too. glibc only; a no-op elsewhere.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_gb() -> float | None:
    """This process's peak resident memory so far, in GB (None where the platform does not say)."""
    try:
        import resource
        import sys
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1e9 if sys.platform == "darwin" else 1e6), 2)  # bytes on macOS, KiB on Linux


#: vocabulary entries per block in sample_next's two-level search
_SAMPLE_BLOCK = 256


#: Tokens whose scaled logit is more than this far below the row's best get weight 0:
#: exp(-80) ~ 1.8e-35 is still a normal float, and the mass dropped over a whole
#: vocabulary (49,152 x 1.8e-35 ~ 1e-30) changes no draw.
_FLOOR = 80.0


def sampling_weights(logits, temperature: float):
    """Unnormalised softmax(logits / temperature) per row, with no subnormal floats (exact zeros instead).

    Why not ``torch.softmax``: its probabilities of very unlikely tokens underflow to
    subnormal floats, and x86 cores compute on subnormals through a slow microcode path.
    On a 2-core Intel Xeon, fp32 generation at temperature 0.7 with softmax's weights ran
    196 tok/s, and 264 with the CPU's flush-to-zero mode on (benchmarks/generation.py's
    prompts, one thread); with these weights flush-to-zero no longer changes the speed.
    The inverse-CDF draw in ``sample_next`` needs no normalisation.

    Five passes over the logits, one new tensor and no boolean mask: ``amax`` (no
    indices, unlike ``max(dim)``), and the cut-off as one in-place ``threshold_``.
    The earlier div / max / sub / lt / masked_fill / exp took 12-15 ms per decode step
    at batch 128 on a 2-core AMX Xeon (8% of a bf16 generate call under
    benchmarks/profile_decode.py); this takes 3.7 ms on fp32 logits.
    """
    import torch

    z = logits.float()
    peak = z.amax(dim=-1, keepdim=True)  # max(z / t) = max(z) / t for t > 0
    w = torch.sub(z, peak).mul_(1.0 / temperature)
    # threshold_ keeps w > -_FLOOR and writes -inf elsewhere: exp of it is an exact zero
    return torch.nn.functional.threshold_(w, -_FLOOR, float("-inf")).exp_()


#: candidates the top-p nucleus is looked for among first; a row whose top candidates hold
#: less than top_p of its mass is sorted in full
_NUCLEUS_CANDIDATES = 128


def sample_next(logits, temperature: float, top_p: float, generator=None):
    """One token per row from softmax(logits / temperature), restricted to the top-p nucleus.

    Without top-p: inverse-CDF sampling in two levels, a block of 256 vocabulary
    entries by its mass, then a token inside it. torch.multinomial (an exponential per
    entry) was 16% of a generate call on this CPU, and a cumsum over the whole
    vocabulary still 3%; block sums and a 256-wide cumsum cost a fraction of that.
    ``right=True`` searches never land on a zero-probability entry.

    With top-p < 1: the nucleus (the smallest set of most likely tokens whose mass
    reaches top_p) is taken from each row's 128 most likely tokens (``topk``) and the
    draw is among them. Only rows whose 128 best hold less than top_p of the mass are
    sorted over the whole vocabulary, as every row was before: that sort made
    sampled generation at top_p 0.95 (the stages' default) run at about half the
    speed of top_p 1 (benchmarks/generation.py's prompts, bf16, 2-core EPYC).
    """
    import torch

    probs = sampling_weights(logits, temperature)
    if top_p >= 1.0:
        return _draw(probs, generator)
    k = min(_NUCLEUS_CANDIDATES, probs.shape[-1])
    top, index = probs.topk(k, dim=-1)  # sorted, most likely first
    limit = probs.sum(-1, keepdim=True).mul_(top_p)
    mass = top.cumsum(-1)
    covered = mass[:, -1] > limit[:, 0]  # the first token outside the nucleus is among the k
    # keep a token while the mass before it is within top_p (the top token always stays)
    top.masked_fill_((mass - top) > limit, 0.0)
    cdf = top.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device)
    pick = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=k - 1)
    tokens = index.gather(1, pick).squeeze(1)
    if not bool(covered.all()):
        rows = (~covered).nonzero().squeeze(1)
        tokens[rows] = _draw(_sorted_nucleus(probs[rows], top_p), generator)
    return tokens


def _sorted_nucleus(probs, top_p: float):
    """``probs`` (unnormalised) with every token outside each row's top-p nucleus set to 0, by a full sort."""
    import torch

    probs = probs / probs.sum(-1, keepdim=True)
    sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
    sorted_p[(sorted_p.cumsum(-1) - sorted_p) > top_p] = 0
    return torch.zeros_like(probs).scatter_(-1, sorted_i, sorted_p)


def _draw(probs, generator=None):
    """One token per row in proportion to ``probs`` (unnormalised, non-negative): the two-level search."""
    import torch

    rows, vocab = probs.shape
    width = _SAMPLE_BLOCK
    n_blocks = -(-vocab // width)
    if n_blocks * width != vocab:
        probs = torch.nn.functional.pad(probs, (0, n_blocks * width - vocab))
    blocks = probs.view(rows, n_blocks, width)
    cdf = blocks.sum(-1).cumsum(-1)
    u = torch.rand((rows, 2), generator=generator, device=probs.device)
    block = torch.searchsorted(cdf, u[:, :1] * cdf[:, -1:], right=True).clamp_(max=n_blocks - 1)
    inner = blocks[torch.arange(rows, device=probs.device), block.squeeze(1)].cumsum(-1)
    k = torch.searchsorted(inner, u[:, 1:] * inner[:, -1:], right=True).clamp_(max=width - 1)
    return (block * width + k).squeeze(1).clamp_(max=vocab - 1)


def _positions(mask):
    """Position ids that start at 0 after the left padding (what each row would get alone)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)
