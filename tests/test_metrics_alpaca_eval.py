"""AlpacaEval 2 metrics: official leaderboard numbers, LC equality with alpaca_eval, the judge's parser and swap."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn

from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.tasks.alpaca_eval import metric as ae
from evalharness.testing.lc_support import write_synthetic_lc_support

MODELS = ["FuseChat-Llama-3.1-8B-Instruct", "NullModel", "OpenHermes-2.5-Mistral-7B", "alpaca-7b",
          "claude-2.1", "gpt-3.5-turbo-1106", "gpt4_1106_preview"]
JUDGED = ["NullModel", "OpenHermes-2.5-Mistral-7B", "alpaca-7b", "claude-2.1", "gpt-3.5-turbo-1106"]  # raw_completion kept
LEADERBOARD = "leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
WEIGHTS = "metrics_weights/weighted_alpaca_eval_gpt4_turbo/length_controlled_v1/baseline_gpt4_1106_preview.csv"
PROMPT_SHA256 = "784227e6dc2832fc08c43d2c8ea3a308e7523780187a1aaad2f85e30bac85f62"  # benchdata provenance.tsv


def annotations_path(benchdata: Path, model: str) -> Path:
    return benchdata / "alpaca_eval" / "results" / model / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"


@pytest.fixture(scope="module")
def official() -> types.SimpleNamespace:
    """alpaca_eval's own modules, to cross-check against (0.6.6 imports pkg_resources, gone from new setuptools)."""
    with pytest.MonkeyPatch.context() as mp:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            mp.setitem(sys.modules, "pkg_resources", types.ModuleType("pkg_resources"))
        glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate")
        from alpaca_eval import completion_parsers, processors, utils
        from alpaca_eval.metrics import get_winrate
    return types.SimpleNamespace(glm=glm, parsers=completion_parsers, processors=processors, utils=utils,
                                 get_winrate=get_winrate)


@contextlib.contextmanager
def official_lc_inputs(official: types.SimpleNamespace, support_dir: Path) -> Any:
    """Point alpaca_eval's hub downloads at our files; undo the global sklearn config its fit sets."""
    with pytest.MonkeyPatch.context() as mp, sklearn.config_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setattr(official.glm, "hf_hub_download", lambda **kw: str(support_dir / kw["filename"]))
        yield


@pytest.fixture(scope="module")
def support_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic df_gamed.csv / instruction_difficulty.csv shaped like the HF dataset's (no network here)."""
    return write_synthetic_lc_support(tmp_path_factory.mktemp("lc_support"))


# ------------------------------------------------------------------ official leaderboard
@pytest.mark.parametrize("model", MODELS)
def test_leaderboard_columns_reproduced(benchdata: Path, model: str) -> None:
    root = benchdata / "alpaca_eval"
    row = pd.read_csv(root / LEADERBOARD, index_col=0).loc[model]
    got = ae.metrics_from_annotations_file(annotations_path(benchdata, model), model=model,
                                           eval_set=root / "eval_set" / "alpaca_eval.json",
                                           model_outputs=root / "results" / model / "model_outputs.json")
    # The CSV holds full floats; annotations.json rounds preferences to 1e-10, hence ~1e-10 differences.
    for key in ("win_rate", "standard_error", "discrete_win_rate"):
        assert got[key] == pytest.approx(row[key], abs=1e-6), key
    for key in ("n_wins", "n_wins_base", "n_draws", "n_total", "avg_length"):
        assert got[key] == row[key], key
    assert got["n_skipped"] == 0 and got["model"] == model and got["reference_model"] == "gpt4_1106_preview"
    # avg_length from output_2 (no model_outputs file) is the same number
    assert ae.metrics_from_annotations_file(annotations_path(benchdata, model))["avg_length"] == row["avg_length"]


def test_scores_carry_keys_and_counts(benchdata: Path) -> None:
    metrics = ae.metrics_from_annotations_file(annotations_path(benchdata, "claude-2.1"))
    scores = {s.metric: s for s in ae.to_scores(metrics, "claude-2.1")}
    assert set(scores) == {"win_rate", "discrete_win_rate", "avg_length"}
    wr = scores["win_rate"]
    assert wr.value == pytest.approx(15.733506736409938, abs=1e-6) and wr.stderr == pytest.approx(1.120315865445773)
    assert (wr.n, wr.n_skipped, wr.extra["n_wins"], wr.extra["n_draws"]) == (805, 0, 115, 2)
    assert (wr.task, wr.task_version, wr.judge_id, wr.judge_version, wr.baseline) == \
        ("alpaca_eval", "2", ae.ANNOTATOR, ae.JUDGE_MODEL, "gpt4_1106_preview")


# ------------------------------------------------------------------ parse failures and input errors
def test_winrate_by_hand_with_unparsed() -> None:
    m = ae.winrate_metrics([1, 2, 1.5, None, 1.75, math.nan, 0])
    # wins: 0, 1, .5, .75, .5 (legacy 0 = tie); discrete: 0, 1, .5, 1, .5
    assert m == {"win_rate": pytest.approx(55.0), "standard_error": pytest.approx(np.std([0, 1, .5, .75, .5], ddof=1) / math.sqrt(5) * 100),
                 "n_wins": 2, "n_wins_base": 1, "n_draws": 2, "n_total": 5,
                 "discrete_win_rate": pytest.approx(60.0), "n_skipped": 2}
    empty = ae.winrate_metrics([None, None])
    assert empty["win_rate"] is None and empty["standard_error"] is None and empty["n_skipped"] == 2
    with pytest.raises(ValueError):
        ae.winrate_metrics([2.5])


def test_unparsed_rows_match_official_and_lc(benchdata: Path, official: types.SimpleNamespace,
                                             support_dir: Path) -> None:
    rows = ae.load_annotations(annotations_path(benchdata, "claude-2.1"))
    rng = np.random.default_rng(1)
    for i in rng.choice(len(rows), 40, replace=False):
        rows[i]["preference"] = None
    for i in rng.choice(len(rows), 5, replace=False):
        rows[i]["preference"] = 0  # legacy tie
    df = pd.DataFrame(rows).astype({"preference": float})
    with official_lc_inputs(official, support_dir):
        want = official.glm.get_length_controlled_winrate(df, save_weights_dir=None)
    got = ae.metrics_from_annotations(rows, lc_support=ae.load_lc_support(support_dir))
    assert got["n_skipped"] == 40 and got["n_total"] == want["n_total"] == 765
    for key, value in want.items():
        assert got[key] == pytest.approx(float(value), abs=1e-9), key


def test_load_annotations_errors_name_record_and_field(tmp_path: Path) -> None:
    good = {"instruction": "i", "output_1": "a", "output_2": "b", "preference": 1.2}
    cases = [([good, {**good, "preference": 2.7}], "record 1", "preference"),
             ([good, {**good, "preference": "M"}], "record 1", "preference"),
             ([{**good, "preference": True}], "record 0", "preference"),
             ([good, good, {k: v for k, v in good.items() if k != "output_2"}], "record 2", "output_2"),
             ([{k: v for k, v in good.items() if k != "preference"}], "record 0", "preference"),
             ([good, [1, 2]], "record 1", None)]
    for rows, where, field in cases:
        path = tmp_path / "annotations.json"
        path.write_text(json.dumps(rows))
        with pytest.raises(InputError) as err:
            ae.load_annotations(path)
        assert err.value.path == str(path) and err.value.field == field and where in str(err.value)
    path = tmp_path / "annotations.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "preference": -1}) + "\n")
    with pytest.raises(InputError) as err:
        ae.load_annotations(path)
    assert err.value.line == 2 and err.value.field == "preference"
    path.write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(InputError, match="invalid JSON") as err:
        ae.load_annotations(path)
    assert err.value.line == 2
    path.write_text(json.dumps({**good, "preference": None}) + "\n" + json.dumps({**good, "preference": float("nan")}))
    assert [r["preference"] for r in ae.load_annotations(path)] == [None, None]


def test_check_against_eval_set(benchdata: Path) -> None:
    rows = ae.load_annotations(annotations_path(benchdata, "alpaca-7b"))
    eval_set = json.loads((benchdata / "alpaca_eval" / "eval_set" / "alpaca_eval.json").read_text())
    assert ae.check_against_eval_set(rows[::-1], eval_set) == rows  # back in eval-set order
    with pytest.raises(InputError, match="not in the eval set") as err:
        ae.check_against_eval_set(rows[:3] + [{**rows[3], "instruction": "Write a poem."}] + rows[4:], eval_set, path="x")
    assert err.value.field == "instruction" and "record 3" in str(err.value)
    with pytest.raises(InputError, match="duplicate"):
        ae.check_against_eval_set(rows + rows[:1], eval_set)
    with pytest.raises(InputError, match="1 of 805 eval-set instructions have no record"):
        ae.check_against_eval_set(rows[1:], eval_set)


def test_several_models_need_a_choice(tmp_path: Path, benchdata: Path) -> None:
    rows = json.loads(annotations_path(benchdata, "alpaca-7b").read_text())
    other = json.loads(annotations_path(benchdata, "claude-2.1").read_text())
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(rows + other))
    with pytest.raises(InputError, match="several models") as err:
        ae.metrics_from_annotations_file(path)
    assert err.value.field == "generator_2"
    assert ae.metrics_from_annotations_file(path, model="alpaca-7b")["n_wins"] == 17


# ------------------------------------------------------------------ length-controlled win rate
def test_lc_equals_official_function(benchdata: Path, official: types.SimpleNamespace, support_dir: Path) -> None:
    support = ae.load_lc_support(support_dir)
    for model in MODELS:
        rows = ae.load_annotations(annotations_path(benchdata, model))
        with official_lc_inputs(official, support_dir):
            want = official.glm.get_length_controlled_winrate(pd.DataFrame(rows), save_weights_dir=None)
        got = ae.length_controlled_winrate(rows, support)
        assert got["length_controlled_winrate"] == pytest.approx(want["length_controlled_winrate"], abs=1e-6), model
        assert got["lc_standard_error"] == pytest.approx(want["lc_standard_error"], abs=1e-6), model


def test_fitted_weights_against_official_and_benchdata(benchdata: Path, official: types.SimpleNamespace,
                                                       support_dir: Path, tmp_path: Path) -> None:
    support = ae.load_lc_support(support_dir)
    saved = pd.read_csv(benchdata / "alpaca_eval" / WEIGHTS, index_col=0)
    assert tuple(saved.columns) == ae.LC_FEATURES  # same names, so our weights compare column by column
    rows = ae.load_annotations(annotations_path(benchdata, "gpt4_1106_preview"))
    baseline = ae.length_controlled_winrate(rows, support)["lc_weights"]
    assert baseline == saved.loc["gpt4_1106_preview"].to_dict()  # all zero, by construction, in both
    rows = ae.load_annotations(annotations_path(benchdata, "claude-2.1"))
    with official_lc_inputs(official, support_dir):
        official.glm.get_length_controlled_winrate(pd.DataFrame(rows), save_weights_dir=tmp_path)
        want = pd.read_csv(tmp_path / "length_controlled_v1" / "baseline_gpt4_1106_preview.csv", index_col=0)
        # official predict_winrate on the official (benchdata) weights vs ours
        official_pred = official.glm.predict_winrate("claude-2.1", "gpt4_1106_preview", weights=saved)
    got = ae.length_controlled_winrate(rows, support)
    assert got["lc_weights"] == pytest.approx(want.loc["claude-2.1"].to_dict(), abs=1e-9)
    assert ae.predict_lc_winrate(saved.loc["claude-2.1"], saved.loc["gpt4_1106_preview"],
                                 support.instruction_difficulty) == pytest.approx(100 * official_pred, abs=1e-9)
    # predicting from our own fitted weights gives back our LC win rate (zero length difference)
    assert ae.predict_lc_winrate(got["lc_weights"], baseline, support.instruction_difficulty) == pytest.approx(
        got["length_controlled_winrate"], abs=1e-9)


def test_fetch_lc_support_files_uses_the_pinned_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network here: the pinned HF revision is asked for, through the one checksummed downloader."""
    from evalharness.tasks import benchdata

    asked = []

    def fake_download(url: str, dest: Path, sha256: str, **kw: Any) -> Path:
        asked.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("x")
        return dest

    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(benchdata, "download", fake_download)
    folder = ae.fetch_lc_support_files()
    assert {p.name for p in folder.iterdir()} == set(ae.LC_SUPPORT_FILES)
    assert all(u.startswith(f"https://huggingface.co/datasets/{ae.HF_DATASET}/resolve/") for u in asked)
    assert [u.rsplit("/", 1)[1] for u in asked] == list(ae.LC_SUPPORT_FILES)


def test_lc_against_leaderboard_with_real_support_files(benchdata: Path) -> None:
    """Runs only where fetch_lc_support_files() has already cached the real HF files (needs network once)."""
    from evalharness.tasks import benchdata
    try:
        cache = [benchdata.fetch(n, download_missing=False) for n in ae.LC_SUPPORT_FILES.values()][0].parent
    except EvalHarnessError:
        pytest.skip("real df_gamed.csv / instruction_difficulty.csv not cached (run fetch_lc_support_files())")
    support = ae.load_lc_support(cache)
    board = pd.read_csv(benchdata / "alpaca_eval" / LEADERBOARD, index_col=0)
    saved = pd.read_csv(benchdata / "alpaca_eval" / WEIGHTS, index_col=0)
    for model in MODELS:
        got = ae.length_controlled_winrate(ae.load_annotations(annotations_path(benchdata, model)), support)
        assert got["length_controlled_winrate"] == pytest.approx(board.loc[model, "length_controlled_winrate"], abs=1e-3)
        assert got["lc_weights"] == pytest.approx(saved.loc[model].to_dict(), abs=1e-3)


def test_lc_bootstrap_ci(benchdata: Path, support_dir: Path) -> None:
    support = ae.load_lc_support(support_dir)
    rows = ae.load_annotations(annotations_path(benchdata, "claude-2.1"))
    lc = ae.length_controlled_winrate(rows, support)["length_controlled_winrate"]
    low, high = ae.lc_winrate_bootstrap_ci(rows, support, rounds=6, seed=3)
    assert low < high and lc - 5 < low < lc + 1 and lc - 1 < high < lc + 5
    assert ae.lc_winrate_bootstrap_ci(rows, support, rounds=6, seed=3) == (low, high)  # seeded
    baseline = ae.load_annotations(annotations_path(benchdata, "gpt4_1106_preview"))
    assert ae.lc_winrate_bootstrap_ci(baseline, support, rounds=6) == (50.0, 50.0)
    # through the CLI entry point, into a Score with a CI
    metrics = ae.metrics_from_annotations_file(annotations_path(benchdata, "claude-2.1"), lc_support_dir=support_dir,
                                               lc_bootstrap_rounds=4)
    score = {s.metric: s for s in ae.to_scores(metrics, "claude-2.1")}["length_controlled_winrate"]
    assert score.value == pytest.approx(lc) and score.ci_low < score.value < score.ci_high
    assert score.stderr is None and score.extra["lc_standard_error"] == metrics["lc_standard_error"]


# ------------------------------------------------------------------ the judge: parser, swap, prompt
@pytest.mark.parametrize("model", JUDGED)
def test_stored_logprobs_give_stored_preferences(benchdata: Path, official: types.SimpleNamespace, model: str) -> None:
    rows = json.loads(annotations_path(benchdata, model).read_text())
    judged = [(i, r) for i, r in enumerate(rows) if r["raw_completion"] is not None]
    assert len(judged) >= 801  # identical outputs get 1.5 without a judge call
    for i, r in judged:
        v = ae.verdict_from_completion(str(i), r["instruction"], r["raw_completion"])
        assert v.status == "ok" and v.value == pytest.approx(r["preference"], abs=1e-9)  # stored to 10 decimals
        assert v.order == ("BA" if ae.is_swapped(r["instruction"]) else "AB")
        shown = official.parsers.logprob_parser(r["raw_completion"], numerator_token="m",
                                                denominator_tokens=["m", "M"], is_binarize=False)[0]
        assert ae.preference_from_completion(r["raw_completion"]) == pytest.approx(shown, abs=1e-12)
    # the swap rule is what makes them agree: the SingleAnnotator default seed (123) would not
    swapped_123 = [abs(ae.unswap_preference(ae.preference_from_completion(r["raw_completion"]),
                                            ae.is_swapped(r["instruction"], 123)) - r["preference"]) < 1e-9
                   for _, r in judged]
    assert 0.3 < np.mean(swapped_123) < 0.7


def test_swap_rule_matches_official_processor(benchdata: Path, official: types.SimpleNamespace) -> None:
    eval_set = json.loads((benchdata / "alpaca_eval" / "eval_set" / "alpaca_eval.json").read_text())
    df = pd.DataFrame({"instruction": [e["instruction"] for e in eval_set], "output_1": "a", "output_2": "b"})
    proc = official.processors.RandomSwitchTwoColumnsProcessor(
        two_columns_to_switch=["output_1", "output_2"], random_seed_columns=["instruction"],
        _switch_column="is_switched_outputs", seed=ae.SWAP_SEED)
    want = proc.preprocess(df)["is_switched_outputs"].tolist()
    assert [ae.is_swapped(i) for i in df["instruction"]] == want and 350 < sum(want) < 455
    assert ae.unswap_preference(1.2, True) == pytest.approx(1.8) and ae.unswap_preference(1.2, False) == 1.2
    assert ae.unswap_preference(None, True) is None


def test_logprob_parser_edge_cases(official: types.SimpleNamespace) -> None:
    def top(**lps: float) -> list[dict[str, Any]]:
        return [{"token": t.replace("_", " "), "logprob": lp} for t, lp in lps.items()]
    assert ae.preference_from_top_logprobs(top(M=-0.1, The=-3)) == 2.0
    assert ae.preference_from_top_logprobs(top(m=-0.1)) == 1.0
    assert ae.preference_from_top_logprobs(top(m=math.log(0.3), M=math.log(0.1))) == pytest.approx(2 - 0.75)
    assert ae.preference_from_top_logprobs(top(Both=-0.1, _m=-1, The=-3)) is None  # neither token: unparsed
    completion = {"logprobs": {"content": [{"top_logprobs": top(Both=-0.1, The=-3)}]}}
    assert math.isnan(official.parsers.logprob_parser(completion, "m", ["m", "M"], is_binarize=False)[0])
    v = ae.verdict_from_completion("7", "x", completion)
    assert v.status == "unparsed" and v.value is None and v.raw is completion
    for bad in (None, "", {}, {"logprobs": {"content": []}},
                {"logprobs": {"content": [{"top_logprobs": top(m=-1)}, {"top_logprobs": top(M=-1)}]}}):
        assert ae.preference_from_completion(bad) is None


def test_judge_prompt_is_the_official_one(benchdata: Path, official: types.SimpleNamespace) -> None:
    config = ae.judge_config()
    assert config["fn_completion_parser"] == "logprob_parser" and config["completions_kwargs"]["max_tokens"] == 1
    template = ae._evaluators_dir(None) / config["prompt_template"]
    assert hashlib.sha256(template.read_bytes()).hexdigest() == PROMPT_SHA256
    rows = json.loads(annotations_path(benchdata, "claude-2.1").read_text())[:5]
    rows.append({"instruction": "Say {output_1} and {instruction}", "output_1": "A {output_2}", "output_2": "B"})
    for r in rows:
        swapped = ae.is_swapped(r["instruction"])
        first, second = (r["output_2"], r["output_1"]) if swapped else (r["output_1"], r["output_2"])
        prompts, _ = official.utils.make_prompts(
            pd.DataFrame([{"instruction": r["instruction"], "output_1": first, "output_2": second}]),
            template=template.read_text())
        assert ae.render_judge_prompt(r["instruction"], first, second) == official.utils.prompt_to_chatml(prompts[0])
    messages = ae.render_judge_prompt("Q?", "ans one", "ans two",
                                      config_dir=benchdata / "alpaca_eval" / "evaluator")  # the benchdata copy
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"].index("ans one") < messages[1]["content"].index("ans two")
