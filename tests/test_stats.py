"""evalharness.core.stats against hand computations on small data and against independent scipy routes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from evalharness.core import stats

T975 = {2: 4.302652729911275, 3: 3.182446305284263}  # Student t 0.975 quantiles (printed tables)


def test_mean_ci_by_hand() -> None:
    mean, se, lo, hi = stats.mean_ci([2.0, 4.0, 9.0])
    sd = math.sqrt(((2 - 5) ** 2 + (4 - 5) ** 2 + (9 - 5) ** 2) / 2)  # sqrt(13)
    assert mean == 5.0 and se == pytest.approx(sd / math.sqrt(3))
    assert (lo, hi) == pytest.approx((5 - T975[2] * sd / math.sqrt(3), 5 + T975[2] * sd / math.sqrt(3)))
    assert all(math.isnan(x) for x in stats.mean_ci([7.0])[1:])  # one value: no fake zero width
    with pytest.raises(ValueError):
        stats.mean_ci([])


def test_cluster_mean_ci_counts_clusters_not_values() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 7.0]
    clusters = ["a", "a", "a", "b", "c", "c"]
    assert stats.cluster_means(values, clusters) == {"a": 2.0, "b": 4.0, "c": 6.0}
    mean, se, lo, hi, n = stats.cluster_mean_ci(values, clusters)
    # cluster means 2, 4, 6: mean 4, SD 2, SE 2 / sqrt(3), t with 2 df (not the 5 of six values)
    assert (mean, n) == (4.0, 3) and se == pytest.approx(2 / math.sqrt(3))
    assert hi - mean == pytest.approx(T975[2] * 2 / math.sqrt(3))
    assert stats.cluster_mean_ci(values, clusters)[0] != pytest.approx(np.mean(values))  # 3.67 unclustered
    with pytest.raises(ValueError):
        stats.cluster_means([1.0], ["a", "b"])


def test_t_p_value_matches_scipy_and_edge_cases() -> None:
    d = np.array([2.0, 1.0, 0.0, 3.0])
    se = d.std(ddof=1) / 2
    assert stats.t_p_value(d.mean(), se, 3) == pytest.approx(st.ttest_1samp(d, 0).pvalue, rel=1e-12)
    assert stats.t_p_value(1.96, 1.0, math.inf) == pytest.approx(0.05, abs=1e-4)  # z test
    assert stats.t_p_value(0.0, 0.0, 5) == 1.0 and stats.t_p_value(0.3, 0.0, 5) == 0.0
    assert math.isnan(stats.t_p_value(1.0, math.nan, 0))


def test_mcnemar_exact_by_hand() -> None:
    # 7 discordant pairs for a, 1 for b: p = 2 (C(8,0) + C(8,1)) / 2^8 = 18 / 256
    assert stats.mcnemar_exact(7, 1) == 18 / 256 == pytest.approx(st.binomtest(7, 8).pvalue)
    assert stats.mcnemar_exact(1, 7) == 18 / 256
    assert stats.mcnemar_exact(4, 4) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(10, 0) == pytest.approx(2 / 1024)


def test_holm_and_bh_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: 0.005*4/1 = 0.02, 0.01*4/2 = 0.02, 0.03*4/3 = 0.04, 0.04*4/4 = 0.04 -> running min from the top
    assert stats.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 0.2, 12)
    assert stats.benjamini_hochberg(q) == pytest.approx(st.false_discovery_control(q).tolist())
    # capped at 1, monotone in the raw p-values, missing values neither adjusted nor counted
    assert stats.holm([0.5, 0.6, 0.9]) == [1.0, 1.0, 1.0]
    adj = stats.holm(q)
    assert all(adj[i] <= adj[j] for i in range(12) for j in range(12) if q[i] <= q[j])
    got = stats.holm([0.01, None, math.nan, 0.04])
    assert got[0] == pytest.approx(0.02) and got[3] == pytest.approx(0.04) and math.isnan(got[1]) and math.isnan(got[2])
    assert stats.benjamini_hochberg([]) == []


def test_mde_paired_t_is_the_80_percent_power_point() -> None:
    sd = 2.5
    for n in (3, 4, 12, 200):
        mde = stats.mde_paired_t(sd, n)
        # independent route 1: the power of the two-sided t test at that effect, from scipy's noncentral t
        crit = st.t.ppf(0.975, n - 1)
        nc = mde / (sd / math.sqrt(n))
        far = st.nct.cdf(-crit, n - 1, nc)
        assert st.nct.sf(crit, n - 1, nc) + np.nan_to_num(far) == pytest.approx(0.8, abs=1e-9)
    n = 12
    mde = stats.mde_paired_t(sd, n)
    # independent route 2: simulated paired t tests at a true difference of mde reject 80% of the time
    rng = np.random.default_rng(0)
    d = rng.normal(mde, sd, size=(40000, n))
    rate = float((st.ttest_1samp(d, 0, axis=1).pvalue < 0.05).mean())
    assert rate == pytest.approx(0.8, abs=0.01)
    # the textbook effect size for n = 10 (Cohen's d_z ~ 1.0) and the t-quantile approximation for large n
    assert stats.mde_paired_t(1.0, 10) == pytest.approx(0.996, abs=0.001)
    n = 2000
    approx = (st.t.ppf(0.975, n - 1) + st.t.ppf(0.8, n - 1)) * 1.0 / math.sqrt(n)
    assert stats.mde_paired_t(1.0, n) == pytest.approx(approx, rel=1e-3)
    assert stats.mde_paired_t(0.0, 5) == 0.0 and math.isnan(stats.mde_paired_t(1.0, 1))


def test_mde_normal_by_hand() -> None:
    assert stats.mde_normal(2.0) == pytest.approx((1.959963984540054 + 0.8416212335729143) * 2.0)


def test_bootstrap_p_value_by_hand() -> None:
    assert stats.bootstrap_p_value([1.0, 2.0, 3.0]) == pytest.approx(2 * 1 / 4)  # none <= 0: 2 (1 + 0) / 4
    assert stats.bootstrap_p_value(np.r_[np.ones(99), -1.0]) == pytest.approx(2 * 2 / 101)
    assert stats.bootstrap_p_value(np.zeros(50)) == 1.0  # a model against itself
    assert stats.bootstrap_p_value(np.r_[-np.ones(60), np.ones(40)]) == pytest.approx(min(1, 2 * 41 / 101))


def test_bootstrap_ci_is_seeded_percentile() -> None:
    x = np.arange(10.0)
    lo, hi = stats.bootstrap_ci(x, np.mean, rounds=200, seed=3)
    idx = np.random.default_rng(3).integers(0, 10, size=(200, 10))
    want = np.quantile(x[idx].mean(axis=1), [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(want)) and stats.bootstrap_ci(x, np.mean, rounds=200, seed=3) == (lo, hi)
