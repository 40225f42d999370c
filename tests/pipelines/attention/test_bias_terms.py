"""Factored window biases (position table, region mask) against their dense definitions."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from attention_reference import gather_bias, pooling_rows, shift_mask, shift_regions, swin_relative_position_index
from pipelines.attention import PooledBias, RegionMask, RelativePositionBias, WindowBias, landmark_grid
from pipelines.attention.bias import pooled_dense_mask, window_runs


def table_index(grid, span) -> torch.Tensor:
    """(N, N) table row of every token pair, one pair at a time (offsets row-major, query minus key)."""
    coords = list(itertools.product(*(range(g) for g in grid)))
    index = torch.empty(len(coords), len(coords), dtype=torch.long)
    for i, ci in enumerate(coords):
        for j, cj in enumerate(coords):
            row = 0
            for a, s in enumerate(span):
                row = row * (2 * s - 1) + (ci[a] - cj[a] + s - 1)
            index[i, j] = row
    return index


def dense_reference(table, grid, span):
    return gather_bias(table, table_index(grid, span))  # (heads, N, N)


def pooled_reference(bias: torch.Tensor, grid, lgrid):
    """The definition (DESIGN §3): R averaged over each landmark's keys / queries / both."""
    pool = pooling_rows(grid, lgrid)
    bias = bias.double()
    return bias @ pool.t(), pool @ bias, pool @ bias @ pool.t()


# grid, table window, landmarks: divisible, non-divisible, non-square, 3-D, 3-D smaller than the table
GEOMETRIES = [((8, 8), (8, 8), 16), ((7, 7), (7, 7), 16), ((6, 10), (6, 10), 12),
              ((2, 8, 8), (2, 8, 8), 32), ((1, 5, 8), (2, 8, 8), 16)]


def test_swin_layout_is_the_tables_layout():
    assert torch.equal(table_index((8, 8), (8, 8)), swin_relative_position_index(8))


@pytest.mark.parametrize("grid,span,landmarks", GEOMETRIES)
def test_dense_rows_gather_the_table(grid, span, landmarks):
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(math.prod(2 * s - 1 for s in span), 3, generator=gen)
    position = RelativePositionBias(table, span, grid)
    expected = dense_reference(table, grid, span)
    assert position.shape == expected.shape
    assert torch.equal(position.dense(), expected)
    assert torch.equal(position.dense(slice(1, 3)), expected[1:3])
    with_index = RelativePositionBias(table, span, grid, index=table_index(grid, span))
    assert torch.equal(with_index.dense(slice(2, 3)), expected[2:3])


@pytest.mark.parametrize("grid,span,landmarks", GEOMETRIES)
def test_pooled_from_table_equals_the_dense_definition(grid, span, landmarks):
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(math.prod(2 * s - 1 for s in span), 3, generator=gen, dtype=torch.float64)
    lgrid = landmark_grid(grid, landmarks)
    fast = RelativePositionBias(table, span, grid).pooled(lgrid, dtype=torch.float64)
    to_keys, from_queries, both = pooled_reference(dense_reference(table, grid, span), grid, lgrid)
    torch.testing.assert_close(fast.query_to_landmark, to_keys, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.landmark_to_key, from_queries, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.landmark_to_landmark, both, rtol=0, atol=1e-12)
    assert fast.landmark_grid == lgrid and fast.runs is None
    as_float = RelativePositionBias(table.float(), span, grid).pooled(lgrid)
    assert as_float.query_to_landmark.dtype == torch.float32
    torch.testing.assert_close(as_float.query_to_landmark.double(), to_keys, rtol=0, atol=1e-5)


@pytest.mark.parametrize("grid,span,landmarks", GEOMETRIES)
def test_pooling_a_dense_bias_by_averaging_equals_the_definition(grid, span, landmarks):
    n = math.prod(grid)
    bias = torch.randn(2, 3, n, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lgrid = landmark_grid(grid, landmarks)
    pooled = PooledBias.from_bias(bias, grid, landmarks)
    to_keys, from_queries, both = pooled_reference(bias, grid, lgrid)
    torch.testing.assert_close(pooled.query_to_landmark, to_keys, rtol=0, atol=1e-12)
    torch.testing.assert_close(pooled.landmark_to_key, from_queries, rtol=0, atol=1e-12)
    torch.testing.assert_close(pooled.landmark_to_landmark, both, rtol=0, atol=1e-12)


def test_region_mask_dense_rows_are_the_shift_mask():
    labels = shift_regions(24, 16, 8, 4)
    mask = RegionMask(labels)
    expected = shift_mask(24, 16, 8, 4)
    assert mask.shape == expected.shape
    assert torch.equal(mask.dense_rows(), expected)
    assert torch.equal(mask.dense_rows(torch.tensor([5, 1])), expected[[5, 1]])
    # mixed windows: those whose mask is not all zero (Swin: last row and column of windows)
    assert torch.equal(mask.mixed, expected.flatten(1).ne(0).any(1))
    assert window_runs(mask.mixed) == ((1, 2), (3, 6))


def test_region_mask_pooled_equals_the_dense_definition_on_mixed_windows():
    labels = shift_regions(24, 24, 8, 4)
    mask = RegionMask(labels)
    dense = shift_mask(24, 24, 8, 4).double()
    for lgrid in ((4, 4), (3, 5)):
        pooled = mask.pooled((8, 8), lgrid, dtype=torch.float64)
        assert pooled.runs == window_runs(mask.mixed)
        mixed = mask.mixed.nonzero().flatten()
        to_keys, from_queries, both = pooled_reference(dense[mixed], (8, 8), lgrid)
        torch.testing.assert_close(pooled.query_to_landmark[:, 0], to_keys, rtol=0, atol=1e-10)
        torch.testing.assert_close(pooled.landmark_to_key[:, 0], from_queries, rtol=0, atol=1e-10)
        torch.testing.assert_close(pooled.landmark_to_landmark[:, 0], both, rtol=0, atol=1e-10)
        # the other windows' pooled mask is zero: that is why they are left out
        plain = (~mask.mixed).nonzero().flatten()
        assert not pooled_reference(dense[plain], (8, 8), lgrid)[0].any()
        from_dense = pooled_dense_mask(dense, (8, 8), lgrid, dtype=torch.float64)
        assert from_dense.runs == pooled.runs
        torch.testing.assert_close(from_dense.query_to_landmark, pooled.query_to_landmark, rtol=0, atol=1e-10)


def test_region_masks_with_equal_labels_share_a_key():
    a = RegionMask(shift_regions(16, 16, 8, 4))
    b = RegionMask(shift_regions(16, 16, 8, 4).clone())
    c = RegionMask(shift_regions(16, 24, 8, 4))
    assert a.key == b.key and a.key != c.key


def test_window_bias_dense_and_shape():
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(15 * 15, 2, generator=gen)
    position = RelativePositionBias(table, (8, 8), (8, 8))
    labels = shift_regions(16, 16, 8, 4)
    unshifted, shifted = WindowBias(position), WindowBias(position, RegionMask(labels))
    assert unshifted.shape == (2, 64, 64) and shifted.shape == (4, 2, 64, 64)
    expected = dense_reference(table, (8, 8), (8, 8))
    assert torch.equal(unshifted.dense(), expected)
    assert torch.equal(shifted.dense(), expected.unsqueeze(0) + shift_mask(16, 16, 8, 4).unsqueeze(1))
    assert torch.equal(WindowBias(expected, shift_mask(16, 16, 8, 4)).dense(), shifted.dense())


def test_position_rows_carry_gradients_to_the_table():
    table = torch.randn(15 * 15, 2, requires_grad=True)
    RelativePositionBias(table, (8, 8), (8, 8)).dense().sum().backward()
    # every table row is used by (8 - |dy|) * (8 - |dx|) token pairs, per head
    counts = torch.tensor([(8 - abs(dy)) * (8 - abs(dx)) for dy in range(-7, 8) for dx in range(-7, 8)])
    assert torch.equal(table.grad, counts[:, None].float().expand(-1, 2))


def test_rejects_a_grid_larger_than_the_table():
    with pytest.raises(ValueError):
        RelativePositionBias(torch.zeros(15 * 15, 2), (8, 8), (9, 8))
