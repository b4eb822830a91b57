"""Independent oracles for the statistics: the Bradley-Terry fit, Arena-Hard's golden numbers, a t interval, and
PPO's adaptive KL controller, each computed here without the function under test.

Arena-Hard's official method is transcribed from arena-hard-auto's utils_math.py at commit
561534a6a768e825a92af7e08384d0fe2111cb79 (compute_mle_elo, get_bootstrap_result, predict_win_rate), which
show_result.py at commit 0489bf384abd010906014dec7b903f7c438eabba (v0.1) calls: sklearn's unpenalised logistic
regression on duplicated battles, np.random.seed(42) once, 100 resamples, 2.5/97.5 percentiles of the Elo.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.stats

from evalharness.analysis.compare import score_ci
from evalharness.tasks.arena_hard import metric as ah
from evalharness.core.records import Score
from evalharness.training.ppo import update_kl_coef

BATTLES = "arena_hard/battles/arena_hard_battles.gpt-4-1106-preview.gpt-3.5-turbo-0125+gpt-4-0613.jsonl"
BASELINE = "gpt-4-0314"


def _synthetic_battles(seed: int = 0, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    strength = {"base": 0.0, "m1": 0.8, "m2": -0.5, "m3": 0.2}
    names = list(strength)
    rows = []
    for _ in range(n):
        a, b = rng.choice(names, 2, replace=False)
        p = 1 / (1 + math.exp(strength[b] - strength[a]))
        u = rng.random()
        rows.append({"model_a": a, "model_b": b,
                     "winner": "tie" if u < 0.15 else "model_a" if u < 0.15 + 0.85 * p else "model_b"})
    return pd.DataFrame(rows)


def test_fit_bt_is_the_bradley_terry_maximum_likelihood():
    """scipy's BFGS on the BT log-likelihood (a tie is half a win each way), Elo scale, baseline at 1000."""
    battles = _synthetic_battles()
    models = ["m1", "m2", "m3"]
    idx = {m: i for i, m in enumerate(models)}
    y = battles.winner.map({"model_a": 1.0, "model_b": 0.0, "tie": 0.5}).to_numpy()

    def strength(t, m):  # natural-log units: r = 1000 + 400 t / ln 10
        return 0.0 if m == "base" else t[idx[m]]

    def nll(t):
        z = np.array([strength(t, a) - strength(t, b) for a, b in zip(battles.model_a, battles.model_b)])
        return float(np.sum(np.logaddexp(0, -z) * y + np.logaddexp(0, z) * (1 - y)))  # P(a wins) = sigmoid(z)

    res = scipy.optimize.minimize(nll, np.zeros(3), method="BFGS", options={"gtol": 1e-10})
    elo, _ = ah.fit_bt(battles, baseline="base")
    assert elo["base"] == pytest.approx(1000.0)
    for m in models:
        assert elo[m] == pytest.approx(1000 + 400 * res.x[idx[m]] / math.log(10), abs=1e-3), m
    assert elo["m1"] > elo["m3"] > elo["base"] > elo["m2"]  # the strengths it was drawn from


def _compute_mle_elo(df: pd.DataFrame, SCALE=400, BASE=10, INIT_RATING=1000, baseline_model=BASELINE) -> pd.Series:
    """arena-hard-auto utils_math.compute_mle_elo (commit 561534a), transcribed."""
    from sklearn.linear_model import LogisticRegression
    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)
    df = pd.concat([df, df], ignore_index=True)
    p, n = len(models.index), df.shape[0]
    X = np.zeros([n, p])
    X[np.arange(n), models[df["model_a"]]] = +math.log(BASE)
    X[np.arange(n), models[df["model_b"]]] = -math.log(BASE)
    Y = np.zeros(n)
    Y[df["winner"] == "model_a"] = 1.0
    tie_idx = (df["winner"] == "tie") | (df["winner"] == "tie (bothbad)")
    tie_idx[len(tie_idx) // 2:] = False
    Y[tie_idx] = 1.0
    lr = LogisticRegression(fit_intercept=False, penalty=None, tol=1e-8)
    lr.fit(X, Y)
    elo_scores = SCALE * lr.coef_[0] + INIT_RATING
    if baseline_model in models.index:
        elo_scores += 1000 - elo_scores[models[baseline_model]]
    return pd.Series(elo_scores, index=models.index)


def _win_rate(elo: float) -> float:
    """predict_win_rate against the baseline at 1000, in percent (get_win_rate_column, unrounded)."""
    return 100 / (1 + 10 ** ((1000 - elo) / 400))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # sklearn 1.8 deprecates penalty=None, as transcribed
def test_arena_hard_golden_values_from_the_official_method(benchdata):
    """Backs test_metrics_arena_hard.py's self-produced 21.209 and 40.042 (and the scores 23.34, 37.90)."""
    battles = pd.read_json(benchdata / BATTLES, lines=True)
    point = _compute_mle_elo(battles)
    np.random.seed(42)
    boot = pd.DataFrame([_compute_mle_elo(battles.sample(frac=1.0, replace=True)) for _ in range(100)])
    official = {m: {"score": _win_rate(point[m]), "ci_low": _win_rate(np.percentile(boot[m], 2.5)),
                    "ci_high": _win_rate(np.percentile(boot[m], 97.5))} for m in ("gpt-3.5-turbo-0125", "gpt-4-0613")}
    assert official["gpt-3.5-turbo-0125"]["ci_low"] == pytest.approx(21.209, abs=1e-3)
    assert official["gpt-4-0613"]["ci_high"] == pytest.approx(40.042, abs=1e-3)
    assert round(official["gpt-3.5-turbo-0125"]["score"], 2) == 23.34
    assert round(official["gpt-4-0613"]["score"], 2) == 37.90
    ours = ah.metrics_from_file(benchdata / BATTLES)["models"]
    for m, want in official.items():
        for k, v in want.items():
            assert ours[m][k] == pytest.approx(v, abs=1e-3), (m, k)


def test_score_ci_from_a_stored_se_is_scipys_t_interval():
    for n, level in ((30, 0.95), (5, 0.9), (200, 0.99)):
        s = Score(task="t", metric="m", model="x", value=0.4, n=n, stderr=0.05, ci_level=level)
        lo, hi = scipy.stats.t.interval(level, n - 1, loc=0.4, scale=0.05)
        assert score_ci(s) == pytest.approx((lo, hi), abs=1e-12)
    # by hand: t_{0.975, 29} = 2.0452296421327034
    s = Score(task="t", metric="m", model="x", value=0.4, n=30, stderr=0.05)
    assert score_ci(s) == pytest.approx((0.4 - 2.0452296421327034 * 0.05, 0.4 + 2.0452296421327034 * 0.05), abs=1e-9)


@pytest.mark.parametrize("kl,want", [
    (9.0, 0.1 * (1 + 0.2 * 256 / 10000)),  # KL / target - 1 = 0.5, clipped to 0.2
    (3.0, 0.1 * (1 - 0.2 * 256 / 10000)),  # -0.5, clipped to -0.2
    (6.6, 0.1 * (1 + 0.1 * 256 / 10000)),  # 0.1, inside the clip
    (6.0, 0.1),  # on target: unchanged
])
def test_update_kl_coef_is_ziegler_adaptive_controller(kl, want):
    """Ziegler et al. 2019, Sec. 2.2: beta <- beta (1 + clip(KL / target - 1, -0.2, 0.2) n / horizon)."""
    assert update_kl_coef(0.1, kl, target=6.0, horizon=10000.0, n_episodes=256) == pytest.approx(want, rel=1e-12)


def _construct_style_matrices(df: pd.DataFrame, meta: dict, BASE=10) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """utils_math.construct_style_matrices (commit 561534a) with apply_ratio [1, 1, 1, 1] and add_one, transcribed;
    conv_metadata joined per battle as show_result.get_battles_from_row does (commit 0489bf3)."""
    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)
    df = pd.concat([df, df], ignore_index=True)
    p, n, k = len(models.index), df.shape[0], 4
    X = np.zeros([n, p + k])
    X[np.arange(n), models[df["model_a"]]] = +math.log(BASE)
    X[np.arange(n), models[df["model_b"]]] = -math.log(BASE)

    def elements(model: str, qid: str) -> list[float]:
        d = meta[model][qid]
        return [d["token_len"], sum(d["header_count"].values()), sum(d["list_count"].values()),
                sum(d["bold_count"].values())]
    a = np.array([elements(m, q) for m, q in zip(df.model_a, df.question_id)], dtype=float).T
    b = np.array([elements(m, q) for m, q in zip(df.model_b, df.question_id)], dtype=float).T
    style_diff = (a - b) / (a + b + 1)
    X[:, -k:] = ((style_diff - style_diff.mean(axis=1)[:, None]) / style_diff.std(axis=1)[:, None]).T
    Y = np.zeros(n)
    Y[df["winner"] == "model_a"] = 1.0
    tie_idx = (df["winner"] == "tie") | (df["winner"] == "tie (bothbad)")
    tie_idx[len(tie_idx) // 2:] = False
    Y[tie_idx] = 1.0
    return X, Y, models


def test_arena_hard_style_control_golden_value_from_the_official_fit(benchdata):
    """Backs test_metrics_arena_hard.py's self-produced 37.11 (gpt-4-0613, style control): utils_math.fit_bt's
    logistic regression (C = 1, no intercept; tol tightened from sklearn's 1e-4 to reach the same optimum to 1e-6)
    on the official style matrix, the model's Elo against the baseline's mapped by predict_win_rate."""
    from sklearn.linear_model import LogisticRegression
    battles = pd.read_json(benchdata / BATTLES, lines=True)
    answers = benchdata / "arena_hard/arena-hard-v0.1/model_answer_more"
    meta = {}
    for f in answers.glob("*.jsonl"):
        rows = pd.read_json(f, lines=True)
        meta[rows.model_id[0]] = dict(zip(rows.question_id, rows.conv_metadata))
    X, Y, models = _construct_style_matrices(battles, meta)
    lr = LogisticRegression(fit_intercept=False, C=1.0, tol=1e-10, max_iter=10000).fit(X, Y)
    elo = 400 * lr.coef_[0][:len(models)] + 1000
    score = 100 / (1 + 10 ** ((elo[models[BASELINE]] - elo[models["gpt-4-0613"]]) / 400))
    assert round(score, 2) == 37.11
    ours = ah.metrics_from_file(benchdata / BATTLES, style_control=True, answers=answers, bootstrap_rounds=5)
    assert ours["models"]["gpt-4-0613"]["score"] == pytest.approx(score, abs=1e-3)
