"""Verified against F.scaled_dot_product_attention with each pattern's boolean mask:
output and the gradients of Q, K and V to 1e-10 in float64 under hypothesis (lengths
the blocks do not divide, causal or not, batch and head dims), and each mask's pair
count against its closed-form formula.

Also checked: no tensor of N² entries is created in the forward or backward pass of the
window and BigBird (a dispatch mode records every tensor's size); the random blocks are
seeded, distinct and disjoint from the window and the global blocks; float32 matches to
1e-5; 3,000 positions work; bad arguments raise errors naming them.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from annotated.transformers.sparse_attention import (
    bigbird_attention,
    bigbird_mask,
    bigbird_random_blocks,
    dataflow,
    example,
    fixed_attention,
    fixed_mask,
    main,
    pattern_masks,
    patterns,
    saved_bytes,
    sliding_window_attention,
    sliding_window_mask,
    strided_attention,
    strided_mask,
)

TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def inputs(lead, n, d, d_v, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, *lead, n, d, generator=generator, dtype=torch.float64)
    v = torch.randn(*lead, n, d_v, generator=generator, dtype=torch.float64)
    return tuple(t.to(dtype).requires_grad_() for t in (q, k, v))


def forward_and_gradients(attention, q, k, v, seed=1):
    out = attention(q, k, v)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    loss = (out * weight.to(out.dtype)).sum()
    return (out, *torch.autograd.grad(loss, (q, k, v)))


def assert_matches_mask(attention, mask, q, k, v, **tolerance):
    ours = forward_and_gradients(attention, q, k, v)
    reference = forward_and_gradients(
        lambda *t: F.scaled_dot_product_attention(*t, attn_mask=mask), q, k, v
    )
    for name, a, b in zip(("O", "dQ", "dK", "dV"), ours, reference):
        torch.testing.assert_close(
            a, b, **(tolerance or TIGHT), msg=lambda m, n=name: f"{n}: {m}"
        )


COMMON = {
    "n": st.integers(1, 40),
    "d": st.integers(1, 5),
    "causal": st.booleans(),
    "lead": st.sampled_from([(), (3,), (2, 2)]),
    "seed": st.integers(0, 2**16),
}

# ---------------------------------------------------------------- against SDPA


@given(window=st.integers(1, 45), **COMMON)
def test_sliding_window_matches_sdpa_with_its_mask(window, n, d, causal, lead, seed):
    q, k, v = inputs(lead, n, d, d + 1, seed=seed)
    assert_matches_mask(
        lambda *t: sliding_window_attention(*t, window, causal),
        sliding_window_mask(n, window, causal),
        q,
        k,
        v,
    )


@given(stride=st.integers(1, 12), **COMMON)
def test_strided_matches_sdpa_with_its_mask(stride, n, d, causal, lead, seed):
    q, k, v = inputs(lead, n, d, 3, seed=seed)
    assert_matches_mask(
        lambda *t: strided_attention(*t, stride, causal),
        strided_mask(n, stride, causal),
        q,
        k,
        v,
    )


@given(stride=st.integers(1, 12), summary=st.integers(1, 12), **COMMON)
def test_fixed_matches_sdpa_with_its_mask(stride, summary, n, d, causal, lead, seed):
    summary = min(summary, stride)
    q, k, v = inputs(lead, n, d, 2, seed=seed)
    assert_matches_mask(
        lambda *t: fixed_attention(*t, stride, summary, causal),
        fixed_mask(n, stride, summary, causal),
        q,
        k,
        v,
    )


@given(
    block=st.integers(1, 8),
    window_blocks=st.integers(0, 2),
    global_blocks=st.integers(0, 3),
    random_blocks=st.integers(0, 3),
    **COMMON,
)
def test_bigbird_matches_sdpa_with_its_mask(
    block, window_blocks, global_blocks, random_blocks, n, d, causal, lead, seed
):
    q, k, v = inputs(lead, n, d, 3, seed=seed)
    sizes = (block, window_blocks, global_blocks, random_blocks, seed)
    assert_matches_mask(
        lambda *t: bigbird_attention(*t, *sizes, causal=causal),
        bigbird_mask(n, *sizes, causal=causal),
        q,
        k,
        v,
    )


def test_the_sweeps_patterns_are_sdpa_with_the_masks_it_reports():
    # The demo times `patterns` and reports the density of `pattern_masks`: the two
    # lists must describe the same four patterns, in the same order.
    q, k, v = inputs((2,), 48, 4, 3)
    masks = pattern_masks(48, 5, 4)
    assert len(masks) == len(patterns(48, 5, 4)) == 4
    for attention, mask in zip(patterns(48, 5, 4).values(), masks):
        assert_matches_mask(attention, mask, q, k, v)


def test_float32_and_a_custom_scale():
    q, k, v = inputs((2, 3), 150, 16, 16, dtype=torch.float32)
    for attention, mask in (
        (lambda *t: sliding_window_attention(*t, 7), sliding_window_mask(150, 7)),
        (lambda *t: strided_attention(*t, 12, True), strided_mask(150, 12, True)),
        (lambda *t: fixed_attention(*t, 12, 3, True), fixed_mask(150, 12, 3, True)),
        (lambda *t: bigbird_attention(*t, 16, 1, 1, 2), bigbird_mask(150, 16, 1, 1, 2)),
    ):
        assert_matches_mask(attention, mask, q, k, v, rtol=1e-4, atol=1e-5)
    q, k, v = inputs((2,), 30, 4, 4)
    torch.testing.assert_close(
        sliding_window_attention(q, k, v, 3, scale=0.3),
        F.scaled_dot_product_attention(
            q, k, v, attn_mask=sliding_window_mask(30, 3), scale=0.3
        ),
        **TIGHT,
    )


def test_a_long_sequence():
    n = 3000
    q, k, v = inputs((), n, 4, 3)
    assert_matches_mask(
        lambda *t: sliding_window_attention(*t, 50, True),
        sliding_window_mask(n, 50, True),
        q,
        k,
        v,
    )
    assert_matches_mask(
        lambda *t: bigbird_attention(*t, 64, 1, 2, 3, 7),
        bigbird_mask(n, 64, 1, 2, 3, 7),
        q,
        k,
        v,
    )


def test_huge_scores_stay_finite():
    q, k, v = inputs((2,), 33, 4, 4)
    q, k = (t.detach().mul(300.0).requires_grad_() for t in (q, k))
    assert_matches_mask(
        lambda *t: strided_attention(*t, 5, True), strided_mask(33, 5, True), q, k, v
    )


# ---------------------------------------------------------------- pair counts


def test_window_pairs_follow_the_formula():
    for n in (1, 7, 64, 100):
        for w in (1, 3, 10, 63):
            if w >= n:
                full, causal = n * n, n * (n + 1) // 2
            else:
                full, causal = (
                    n * (2 * w + 1) - w * (w + 1),
                    n * (w + 1) - w * (w + 1) // 2,
                )
            assert sliding_window_mask(n, w).sum() == full
            assert sliding_window_mask(n, w, True).sum() == causal
    # the rows: 2w + 1 keys in the middle
    assert sliding_window_mask(100, 10).sum(dim=1)[10:90].eq(21).all()


def test_strided_pairs_follow_the_formula():
    for n, stride in ((64, 8), (100, 7), (10, 1), (5, 9)):
        causal = sum(min(i + 1, stride) + i // stride for i in range(n))
        band = sum(
            min(i, stride - 1) + min(n - 1 - i, stride - 1) + 1 for i in range(n)
        )
        column = sum(i // stride + (n - 1 - i) // stride for i in range(n))
        assert strided_mask(n, stride, True).sum() == causal
        assert strided_mask(n, stride).sum() == band + column
    # N = m ℓ, causal: ℓ(ℓ+1)/2 + (N-ℓ)ℓ for the band, and Σ floor(i/ℓ) for columns
    n, stride = 64, 8
    band = stride * (stride + 1) // 2 + (n - stride) * stride
    column = stride * (n // stride) * (n // stride - 1) // 2
    assert strided_mask(n, stride, True).sum() == band + column


def test_fixed_pairs_follow_the_formula():
    for n, stride, c in ((64, 8, 1), (64, 8, 3), (100, 7, 2), (13, 5, 5)):
        causal = sum(i % stride + 1 + (i // stride) * c for i in range(n))
        blocks = [min(stride, n - start) for start in range(0, n, stride)]
        summary_cells = [max(0, size - (stride - c)) for size in blocks]
        both = sum(
            size * (size + sum(summary_cells) - cells)
            for size, cells in zip(blocks, summary_cells)
        )
        assert fixed_mask(n, stride, c, True).sum() == causal
        assert fixed_mask(n, stride, c).sum() == both


def test_bigbird_pairs_follow_the_block_layout():
    n, block = 70, 8  # 9 blocks, the last of 6
    random = bigbird_random_blocks(9, 1, 2, 2, 3, False)
    sizes = [min(block, n - start) for start in range(0, n, block)]
    expected = 0
    for row in range(9):
        for col in range(9):
            if abs(row - col) <= 1 or row < 2 or col < 2 or col in random[row]:
                expected += sizes[row] * sizes[col]
    assert bigbird_mask(n, block, 1, 2, 2, 3).sum() == expected
    # without random blocks and globals: a band of 3 blocks
    assert bigbird_mask(64, 8, 1, 0, 0).sum() == (3 * 8 - 2) * 64


def test_causal_masks_are_the_lower_triangle_of_the_bidirectional_ones():
    lower = torch.ones(50, 50, dtype=torch.bool).tril()
    for build in (
        lambda causal: sliding_window_mask(50, 4, causal),
        lambda causal: strided_mask(50, 6, causal),
        lambda causal: fixed_mask(50, 6, 2, causal),
        lambda causal: bigbird_mask(50, 5, 1, 1, 0, causal=causal),
    ):
        assert torch.equal(build(True), build(False) & lower)


def test_random_blocks_are_seeded_distinct_and_disjoint():
    for causal in (False, True):
        table = bigbird_random_blocks(20, 1, 2, 3, 5, causal)
        assert torch.equal(table, bigbird_random_blocks(20, 1, 2, 3, 5, causal))
        assert not torch.equal(table, bigbird_random_blocks(20, 1, 2, 3, 6, causal))
        assert (table[:2] == -1).all()  # global rows need none
        for row in range(2, 20):
            chosen = [b for b in table[row].tolist() if b >= 0]
            assert len(set(chosen)) == len(chosen)
            assert all(b >= 2 and abs(b - row) > 1 for b in chosen)
            if causal:
                assert all(b < row for b in chosen)
                assert len(chosen) == min(3, max(0, row - 1 - 2))
            else:
                assert len(chosen) == 3


# ---------------------------------------------------------------- memory


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(result):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return result


def largest_tensor(attention, n):
    q, k, v = inputs((1,), n, 8, 8, dtype=torch.float32)
    with LargestTensor() as mode:
        attention(q, k, v).sum().backward()
    return mode.largest


def test_window_and_bigbird_never_create_an_n_by_n_tensor():
    n = 1024
    window = largest_tensor(lambda *t: sliding_window_attention(*t, 16), n)
    assert window == n * 3 * 16  # the [N/w, w, 3w] scores
    bigbird = largest_tensor(lambda *t: bigbird_attention(*t, 16, 1, 1, 2), n)
    # the largest: the random-block membership test, [N/b, b, 3b, R] booleans
    assert bigbird <= n * 3 * 16 * 2 < n * n // 8
    dense = largest_tensor(
        lambda *t: F.scaled_dot_product_attention(
            *t, attn_mask=sliding_window_mask(n, 16)
        ),
        n,
    )
    assert dense >= n * n


def test_saved_bytes_grow_linearly_for_the_window():
    def saved(n):
        q, k, v = inputs((2,), n, 8, 8, dtype=torch.float32)
        return saved_bytes(lambda: sliding_window_attention(q, k, v, 16))

    assert saved(2048) == 2 * saved(1024)
    q, k, v = inputs((2,), 1024, 8, 8, dtype=torch.float32)
    mask = sliding_window_mask(1024, 16)
    dense = saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert dense > 1024 * 1024 * 4  # the float mask alone


# ---------------------------------------------------------------- example and demo


def test_example_and_dataflow():
    fn, args = example()
    out = fn(*args)
    q, k, v = args[:3]
    torch.testing.assert_close(
        out,
        F.scaled_dot_product_attention(q, k, v, attn_mask=bigbird_mask(20, 4, 1, 1, 1)),
    )
    nodes, edges = dataflow(out)
    ids = {node for node, _ in nodes}
    assert all(src in ids and dst in ids for src, dst, _ in edges)


def test_demo_checks_and_measures(tmp_path, capsys):
    metrics = main(
        [
            "--lengths", "64,256",
            "--heads", "1",
            "--dim", "8",
            "--window", "8",
            "--block", "8",
            "--repeats", "1",
            "--check-length", "37",
            "--device", "cpu",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    for name in ("window", "strided", "fixed", "BigBird"):
        assert metrics[f"max error {name}"] < 1e-12
    assert metrics["window saved ratio"] > 1
    assert metrics["window density"] == pytest.approx((256 * 17 - 8 * 9) / 256**2)
    assert "N=256, 1 heads" in capsys.readouterr().out
    for name in ("masks.png", "memory_time.png"):
        assert (tmp_path / name).stat().st_size > 1000


# ---------------------------------------------------------------- bad input


def good():
    return inputs((2,), 6, 3, 3)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda q, k, v: sliding_window_attention(q.detach().numpy(), k, v, 2),
            TypeError,
            "sliding_window_attention: q must be a floating-point torch.Tensor",
        ),
        (
            lambda q, k, v: strided_attention(q, k.long(), v, 2),
            TypeError,
            "k must be a floating-point torch.Tensor, got torch.int64",
        ),
        (
            lambda q, k, v: fixed_attention(q, k, v[0, 0], 2),
            ValueError,
            r"v must be \[\.\.\., N, features\] with N >= 1, got shape \(3,\)",
        ),
        (
            lambda q, k, v: bigbird_attention(q, k.float(), v, 2),
            TypeError,
            "q, k and v must share one dtype and device",
        ),
        (
            lambda q, k, v: sliding_window_attention(q, k[:, :5], v[:, :5], 2),
            ValueError,
            r"same leading dims and N, got \(2, 6, 3\), \(2, 5, 3\)",
        ),
        (
            lambda q, k, v: sliding_window_attention(q, k[..., :2], v, 2),
            ValueError,
            "q, k and v must be",
        ),
        (
            lambda q, k, v: sliding_window_attention(q, k, v, 0),
            ValueError,
            "window must be an int >= 1, got 0",
        ),
        (
            lambda q, k, v: strided_attention(q, k, v, 2.0),
            ValueError,
            "stride must be an int >= 1, got 2.0",
        ),
        (
            lambda q, k, v: fixed_attention(q, k, v, 3, 4),
            ValueError,
            "summary must be <= stride=3, got 4",
        ),
        (
            lambda q, k, v: bigbird_attention(q, k, v, 2, random_blocks=-1),
            ValueError,
            "random_blocks must be an int >= 0, got -1",
        ),
        (
            lambda q, k, v: bigbird_attention(q, k, v, 2, causal=1),
            TypeError,
            "causal must be a bool, got 1",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(*good())


# ---------------------------------------------------------------- benchmarks

BENCH_N, BENCH_WINDOW = 4096, 64


def bench_step(attention):
    generator = torch.Generator().manual_seed(0)
    q, k, v, grad_out = (
        torch.randn(1, 2, BENCH_N, 64, generator=generator) for _ in range(4)
    )
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def step():
        q.grad = k.grad = v.grad = None
        attention(q, k, v).backward(grad_out)

    return step


GROUP = "sliding window w=64, forward+backward, 2 heads, N=4096, d=64, float32"


@pytest.mark.benchmark(group=GROUP)
def test_bench_sliding_window_ours(benchmark):
    benchmark.extra_info["label"] = "our sliding_window_attention (blocks of w)"
    benchmark(bench_step(lambda q, k, v: sliding_window_attention(q, k, v, 64)))


@pytest.mark.benchmark(group=GROUP)
def test_bench_sliding_window_sdpa_with_mask(benchmark):
    benchmark.extra_info["label"] = "F.scaled_dot_product_attention, boolean mask"
    benchmark.extra_info["baseline"] = True
    mask = sliding_window_mask(BENCH_N, BENCH_WINDOW)
    benchmark(
        bench_step(
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        )
    )
