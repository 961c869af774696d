"""Property tests of AUSAM's ADLP sampler: valid probabilities and draws for any history."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flatsam import ADLPSampler

histories = st.lists(
    st.one_of(st.just(0.0), st.just(1.0), st.floats(min_value=0.0, max_value=1e6, allow_nan=False)),
    min_size=1,
    max_size=40,
)


def sampler_with(
    history: list[float], keep: float, epoch: int, s_min: float = 0.1, s_max: float = 0.5, seed: int = 0
) -> ADLPSampler:
    sampler = ADLPSampler(len(history), keep=keep, s_min=s_min, s_max=s_max, seed=seed)
    sampler.dlp_sum = torch.tensor(history, dtype=torch.float32)
    sampler.set_epoch(epoch)
    return sampler


@settings(max_examples=150, deadline=None)
@given(
    history=histories,
    keep=st.floats(min_value=0.01, max_value=1.0),
    epoch=st.integers(1, 60),
    seed=st.integers(0, 2**31),
)
def test_probabilities_and_draws_are_valid(history, keep, epoch, seed):
    sampler = sampler_with(history, keep, epoch, seed=seed)
    index = torch.randperm(len(history), generator=torch.Generator().manual_seed(seed))
    p = sampler.probabilities(index)
    assert torch.isfinite(p).all() and (p > 0).all()
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-5)
    # min-max scaling bounds the ratio of probabilities by s_hi / s_min
    assert float(p.max() / p.min()) <= sampler.upper_weight() / sampler.s_min * (1 + 1e-5)
    rows = sampler.select(index)
    assert len(rows) == max(1, math.floor(keep * len(index)))
    assert len(set(rows.tolist())) == len(rows)
    assert all(0 <= r < len(index) for r in rows.tolist())


@settings(max_examples=50, deadline=None)
@given(value=st.floats(min_value=0.0, max_value=1e6), size=st.integers(1, 30))
def test_equal_histories_give_uniform_probabilities(value, size):
    sampler = sampler_with([value] * size, 0.5, 10)
    p = sampler.probabilities(torch.arange(size))
    torch.testing.assert_close(p, torch.full((size,), 1.0 / size))


DRAWS = 4000


def draw_counts(history: list[float], keep: float, seed: int) -> torch.Tensor:
    """How often each row of a batch with ADLP ``history`` is drawn in ``DRAWS`` draws (epoch 30: s_hi =
    s_max = 0.5)."""
    sampler = sampler_with(history, keep, epoch=30, seed=seed)
    counts = torch.zeros(len(history), dtype=torch.float64)
    for _ in range(DRAWS):
        counts[sampler.select(torch.arange(len(history)))] += 1
    return counts


def test_single_draws_follow_the_probabilities_chi_square():
    """One row per draw (⌊0.1·10⌋ = 1): ADLP 0…9 scale linearly onto weights 0.1 + 0.4·i/9, so
    p_i = w_i / Σw. Pearson's χ² of 4000 draws against p, 9 degrees of freedom, must stay below 27.88,
    its 99.9 % quantile: a fresh seed would fail with probability 0.001 (the seed is fixed)."""
    weights = torch.tensor([0.1 + 0.4 * i / 9 for i in range(10)], dtype=torch.float64)
    p = weights / weights.sum()
    counts = draw_counts([float(i) for i in range(10)], keep=0.1, seed=11)
    expected = DRAWS * p
    assert float(((counts - expected) ** 2 / expected).sum()) < 27.88
    # a draw by the wrong probabilities fails the same bound: uniform rows give χ² ≈ 1100 here
    uniform = torch.full((10,), DRAWS / 10, dtype=torch.float64)
    assert float(((uniform - expected) ** 2 / expected).sum()) > 100


def test_draws_without_replacement_include_rows_at_their_inclusion_probabilities():
    """Two of four rows per draw, without replacement (``torch.multinomial``'s successive draws): row i
    is in the pair with π_i = p_i + Σ_{j≠i} p_j·p_i/(1 − p_j), first or second. ADLP [0, 1, 2, 3] gives
    weights 0.1, 0.2333, 0.3667, 0.5. Each row's count of 4000 draws must lie within 3.66 binomial
    standard deviations of 4000·π_i: two-sided 0.001/4 per row, so a fresh seed would fail with
    probability at most 0.001 (Bonferroni over the four rows; the seed is fixed)."""
    weights = [0.1 + 0.4 * i / 3 for i in range(4)]
    p = [w / sum(weights) for w in weights]
    inclusion = [p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)]
    assert sum(inclusion) == pytest.approx(2.0)
    counts = draw_counts([0.0, 1.0, 2.0, 3.0], keep=0.5, seed=12)
    assert counts.sum() == 2 * DRAWS
    for i in range(4):
        sd = math.sqrt(DRAWS * inclusion[i] * (1 - inclusion[i]))
        assert abs(float(counts[i]) - DRAWS * inclusion[i]) < 3.66 * sd, (i, float(counts[i]), inclusion[i])
    # k·p_i, the inclusion a naive reading would expect, is more than 10 standard deviations off row 3
    assert abs(DRAWS * 2 * p[3] - DRAWS * inclusion[3]) > 10 * math.sqrt(
        DRAWS * inclusion[3] * (1 - inclusion[3])
    )


def test_warmup_overwrites_then_history_averages():
    sampler = ADLPSampler(4, warmup_epochs=1)
    idx = torch.tensor([0, 1])
    sampler.update(idx, torch.tensor([1.0, 1.0]), torch.tensor([3.0, 0.5]))  # epoch 0: overwrite
    torch.testing.assert_close(sampler.adlp, torch.tensor([2.0, 0.5, 1.0, 1.0]))
    sampler.set_epoch(1)
    sampler.update(idx, torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.5]))  # then: running mean
    torch.testing.assert_close(sampler.adlp, torch.tensor([1.5, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(sampler.dlp_count, torch.tensor([2.0, 2.0, 1.0, 1.0]))


def test_ema_option_and_ramp():
    sampler = ADLPSampler(2, warmup_epochs=0, average="ema", ema_decay=0.5, ramp_epochs=30)
    sampler.update(torch.tensor([0]), torch.tensor([0.0]), torch.tensor([3.0]))
    torch.testing.assert_close(sampler.adlp, torch.tensor([2.0, 1.0]))
    assert sampler.upper_weight(0) == 0.5 - 1.0 * 0.4 + 1e-9 and sampler.upper_weight(30) == 0.5 + 1e-9
    assert math.isclose(sampler.upper_weight(15), 0.3 + 1e-9)
    assert ADLPSampler(2, top_offset=0.0).upper_weight(30) == 0.5  # the paper's formula


def test_reweight_gives_importance_weights():
    from flatsam.component import StepContext

    sampler = sampler_with([0.0, 1.0, 2.0, 3.0], keep=0.5, epoch=40)
    sampler.reweight = True
    index = torch.arange(4)
    plan = sampler.plan(StepContext(step=0, epoch=40, batch_size=4, index=index))
    p = sampler.probabilities(index)
    torch.testing.assert_close(plan.descent_weights, 1.0 / (4 * p[plan.descent]))
    assert plan.ascent_weights is None


def test_normalised_dlp_divides_by_rho_times_grad_norm():
    sampler = ADLPSampler(2, warmup_epochs=0, normalize_by_grad_norm=True)
    sampler.update(torch.tensor([1]), torch.tensor([1.0]), torch.tensor([1.5]), grad_norm=2.0, rho=0.1)
    torch.testing.assert_close(sampler.adlp, torch.tensor([1.0, (1.0 + 2.5) / 2]))


def test_a_loop_without_set_epoch_is_warned_about():
    sampler = ADLPSampler(10, warmup_epochs=1)
    batch = torch.arange(10)
    sampler.update(batch, torch.zeros(10), torch.ones(10))
    sampler.update(batch, torch.zeros(10), torch.ones(10))  # two passes: still within 1 + 1 epochs
    with pytest.warns(UserWarning, match="set_epoch"):
        sampler.update(batch[:3], torch.zeros(3), torch.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampler.update(batch, torch.zeros(10), torch.ones(10))  # warned once only
