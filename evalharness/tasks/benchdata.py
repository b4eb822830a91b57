"""Benchmark data files by name: from a local copy, the user cache, or their public home, sha256-checked.

``fetch("alpaca_eval/eval_set")`` returns a path to a verified file. It looks, in order, in
``local_dir`` (a folder laid out like ``../shared/benchdata``), in ``paths.cache_dir('benchdata')``
(same layout), and else downloads the pinned URL into that cache. Every file is checked against the
sha256 pinned here (from benchdata's provenance.tsv); a download that fails the check leaves nothing
behind, and nothing unverified is ever returned. URLs name a commit, never a branch, so a file
cannot change under a fixed name.
"""

from __future__ import annotations

import hashlib
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from evalharness.core import paths
from evalharness.core.errors import EvalHarnessError, InputError


class DataFile(NamedTuple):
    """One pinned file. ``path``: where it sits in the benchdata layout (and the cache); ``url``: its
    public home at a fixed revision, or None for a file derived by hand (local copies only)."""

    path: str
    url: str | None
    sha256: str
    note: str = ""


class ChecksumError(EvalHarnessError):
    """A file's sha256 differs from the pinned one."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | Path, sha256: str, *, timeout_s: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically (``paths.write_atomic``): stream to a temporary file beside it, check
    the sha256, then rename. On any failure (network, checksum) no file is left at ``dest`` or beside it."""

    def stream(out: Any) -> None:
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "evalharness"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ChecksumError(f"{url}: sha256 {digest.hexdigest()} differs from the pinned {sha256}")

    try:
        return paths.write_atomic(Path(dest), stream, binary=True)
    except OSError as e:  # URLError, HTTPError and timeouts are OSErrors
        raise EvalHarnessError(f"could not download {url}: {e}") from None


def fetch(
    name: str, *, local_dir: str | Path | None = None, download_missing: bool = True, timeout_s: float = 60.0
) -> Path:
    """Path to the verified file registered as ``name`` (see ``REGISTRY``).

    A copy in ``local_dir`` that fails its checksum is an error (it is the user's file: never
    replaced); a corrupt cached copy is downloaded again. ``download_missing=False`` never touches
    the network.
    """
    if name not in REGISTRY:
        near = sorted(n for n in REGISTRY if n.split("/")[0] == name.split("/")[0]) or sorted(REGISTRY)
        raise EvalHarnessError(f"unknown benchmark file '{name}'; known: {', '.join(near)}")
    entry = REGISTRY[name]
    looked = []
    if local_dir is not None:
        if not Path(local_dir).is_dir():  # a wrong data_dir is named as such, not reported as a failed download
            raise InputError(
                "data_dir is not a folder (give the benchmark data root, laid out like shared/benchdata)",
                path=str(local_dir),
                field="data_dir",
            )
        local = Path(local_dir) / entry.path
        if local.is_file():
            if (got := sha256_file(local)) != entry.sha256:
                raise ChecksumError(f"{local}: sha256 {got} differs from the pinned {entry.sha256} ({name})")
            return local
        looked.append(str(local))
    cached = paths.cache_dir("benchdata") / entry.path
    if cached.is_file():
        if sha256_file(cached) == entry.sha256:
            return cached
        cached.unlink()
    looked.append(str(cached))
    if entry.url is None:
        raise EvalHarnessError(
            f"{name}: not found (looked in {', '.join(looked)}); it has no public download "
            f"({entry.note}): pass a local folder that has {entry.path}"
        )
    if not download_missing:
        raise EvalHarnessError(f"{name}: not found (looked in {', '.join(looked)}) and downloads are off")
    try:
        return download(entry.url, cached, entry.sha256, timeout_s=timeout_s)
    except EvalHarnessError as e:
        if local_dir is None:
            raise
        raise EvalHarnessError(f"{name}: not in data_dir (looked for {looked[0]}) nor the cache, and {e}") from None


# ------------------------------------------------------------------ the registry
def _github(repo: str, commit: str, upstream: str, local: str, sha256: str) -> DataFile:
    return DataFile(
        local,
        f"https://raw.githubusercontent.com/{repo}/{commit}/{upstream}",
        sha256,
        f"{repo}@{commit[:12]}:{upstream}",
    )


def _hf_dataset(repo: str, revision: str, upstream: str, local: str, sha256: str) -> DataFile:
    return DataFile(
        local,
        f"https://huggingface.co/datasets/{repo}/resolve/{revision}/{upstream}",
        sha256,
        f"hf:{repo}@{revision[:12]}:{upstream}",
    )


_ALPACA = partial(_github, "tatsu-lab/alpaca_eval", "cd543a149df89434d8a54582c0151c0b945c3d20")
_ALPACA_HF = partial(_hf_dataset, "tatsu-lab/alpaca_eval", "2edc6fad8be6b14ea7230aabfd08188da6b8b814")
_ARENA = partial(_github, "lmarena/arena-hard-auto", "196f6b826783b3da7310e361a805fa36f0be83f3")
_FASTCHAT = partial(_github, "lm-sys/FastChat", "0e6d3e4beaab66f4d3f93db72541a4abab8af28d")
_EVALUATORS = "src/alpaca_eval/evaluators_configs/"

REGISTRY: dict[str, DataFile] = {
    # AlpacaEval 2: eval set (805 instructions; the copy in a public course repository, content as
    # the HF dataset's alpaca_eval.json), judge config and template, leaderboard, LC GLM side data.
    "alpaca_eval/eval_set": _github(
        "stanford-cs336/spring2024-assignment5-alignment",
        "fcbfe2b3b72cb9e5536b93ba12265d04b8ca4cca",
        "data/alpaca_eval/alpaca_eval.jsonl",
        "alpaca_eval/eval_set/alpaca_eval.jsonl",
        "9f3cf318fe67b3a7eec7c26260d7654ea17917cc5d1d00eeecc2d70709ba5193",
    ),
    "alpaca_eval/judge_config": _ALPACA(
        _EVALUATORS + "weighted_alpaca_eval_gpt4_turbo/configs.yaml",
        "alpaca_eval/evaluator/weighted_alpaca_eval_gpt4_turbo/configs.yaml",
        "fd5c656d9959ffd63b986c8216a81e83e001d17ced5a08defc1c857ce9dd033e",
    ),
    "alpaca_eval/judge_template": _ALPACA(
        _EVALUATORS + "alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt",
        "alpaca_eval/evaluator/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt",
        "784227e6dc2832fc08c43d2c8ea3a308e7523780187a1aaad2f85e30bac85f62",
    ),
    "alpaca_eval/leaderboard": _ALPACA(
        "src/alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv",
        "alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv",
        "fe32bf85c2f7429038faa4c9a884d1d131726454ff84a4b810a91c1c7a2aa0e9",
    ),
    # Pinned as metrics.alpaca_eval pins them (sha256 not checked against a download here: no network).
    "alpaca_eval/lc/df_gamed": _ALPACA_HF(
        "df_gamed.csv",
        "alpaca_eval/lc_support/df_gamed.csv",
        "97aeec3f1c7de6dee6fd31fe66f1702623f4614c3efe1c6fc5f4927cd5fd674d",
    ),
    "alpaca_eval/lc/instruction_difficulty": _ALPACA_HF(
        "instruction_difficulty.csv",
        "alpaca_eval/lc_support/instruction_difficulty.csv",
        "e28d875bb334f75e17acd1e4ed659b261860e3db379cf5de29060301bed0a18b",
    ),
    # Arena-Hard: questions, baseline answers (v0.1: gpt-4-0314; v2.0: o3-mini), configs, battles.
    "arena_hard/v0.1/questions": _ARENA(
        "data/arena-hard-v0.1/question.jsonl",
        "arena_hard/arena-hard-v0.1/question.jsonl",
        "2650242d2883f22b2abd498f273b6a7e02253cce533f5c91a858e1d44aa3002f",
    ),
    "arena_hard/v2.0/questions": _ARENA(
        "data/arena-hard-v2.0/question.jsonl",
        "arena_hard/arena-hard-v2.0/question.jsonl",
        "a75cef6623db6b27aec810497b059f0659705d7ff48dcbccc5bd5b130728ac73",
    ),
    "arena_hard/v2.0/answers/o3-mini-2025-01-31": _ARENA(
        "data/arena-hard-v2.0/model_answer/o3-mini-2025-01-31.jsonl",
        "arena_hard/arena-hard-v2.0/model_answer/o3-mini-2025-01-31.jsonl",
        "c23a7c255eead99f7f86ad48aa1d8ccdb5b3334f2097e0e1e09184df87265e03",
    ),
    "arena_hard/v0.1/config": _ARENA(
        "config/arena-hard-v0.1.yaml",
        "arena_hard/config/arena-hard-v0.1.yaml",
        "87ac45a188421218349697b5eda95cc77f6e60b6f61495d67d8cfebba3210528",
    ),
    "arena_hard/v2.0/config": _ARENA(
        "config/arena-hard-v2.0.yaml",
        "arena_hard/config/arena-hard-v2.0.yaml",
        "ee68e5c6ac98a79720bf11014fc3f7fc3c3e5899153b3b08efe3db0e174215a0",
    ),
    "arena_hard/v0.1/judge_config": _github(
        "lmarena/arena-hard-auto",
        "3071ef95d913bb5cd632641db336a3b6c7fe4bdd",
        "config/judge_config.yaml",
        "arena_hard/config/judge_config.v0.1-legacy.yaml",
        "6e001736bacacdb1591ffca7eec953a7089f8f5604872d1ca4f9a6f9de1ee451",
    ),
    "arena_hard/v2.0/judge_prompts": DataFile(
        "arena_hard/config/judge_prompts_v2.0.json",
        None,
        "d89d637f8c95c0e91319d750bd232fe4c5cb3c21efd9c0c58ed72c419384065e",
        "derived: OG_ARENA_HARD_PROMPT and JUDGE_SETTINGS of lmarena/arena-hard-auto@196f6b826783:utils/judge_utils.py",
    ),
    "arena_hard/v0.1/battles": _github(
        "danielwetzel/arena-hard-auto",
        "20abca57cea9bb4955b428a24d4a2fe65424940b",
        "data/arena_hard_battles.jsonl",
        "arena_hard/battles/arena_hard_battles.gpt-4-1106-preview.gpt-3.5-turbo-0125+gpt-4-0613.jsonl",
        "2d4b4747f39b2d6915152d42ec23e33832f2eb157f90ca97b98c08ccf9055f54",
    ),
    # MT-Bench (FastChat llm_judge): questions, judge prompts, reference answers.
    "mt_bench/questions": _FASTCHAT(
        "fastchat/llm_judge/data/mt_bench/question.jsonl",
        "mt_bench/question.jsonl",
        "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
    ),
    "mt_bench/judge_prompts": _FASTCHAT(
        "fastchat/llm_judge/data/judge_prompts.jsonl",
        "mt_bench/judge_prompts.jsonl",
        "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6",
    ),
    "mt_bench/reference/gpt-4": _FASTCHAT(
        "fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl",
        "mt_bench/reference_answer/gpt-4.jsonl",
        "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f",
    ),
    "mt_bench/reference/gpt-4-1106-preview": _github(  # the reference SimPO's MT-Bench runs use
        "princeton-nlp/SimPO",
        "1b3e8f3528a23bce3da514a2dce8ea7490d4bc75",
        "eval/mt-bench/gpt-4-1106-preview.jsonl",
        "mt_bench/reference_answer/gpt-4-1106-preview.simpo.jsonl",
        "fe030678a33dbbd3d729e7569375150b8830a53f5b11f820a75b630db317f56f",
    ),
}

# AlpacaEval official results: model_outputs.json, and annotations.json where benchdata has them.
_ALPACA_RESULTS = {  # model: (model_outputs.json sha256, weighted_alpaca_eval_gpt4_turbo annotations sha256)
    "gpt4_1106_preview": (
        "83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4",
        "2a05177cffbab8fa409adf7ee1f0f90414cab169afe391b861489a5734c79363",
    ),
    "FuseChat-Llama-3.1-8B-Instruct": (
        "013d4c76700f4775ab791a4504d1a4127c0ea648c62f3b3672e286009547b5c1",
        "7ef73623093cb690473d201417d3c6dfcb0e8d1c1f329180d802ab7dec81b1dc",
    ),
    "NullModel": (
        "9bd0b067066c43cff5f57d7d8d17c844acd817c266f642a43beff23a9b5f5a74",
        "d8e6d6d8ad735b57149fe0d9cb307e095cdc8befee5f0a849e00d66912500be3",
    ),
    "OpenHermes-2.5-Mistral-7B": (
        "293cfb19ff9d954d9eceea5d8eafd1f3e65a3420e76a434c02f6bd2f4e22c160",
        "196f38b5f7fb3c3242635cc4a8175f2c7b39d5648979f086ec7ba93c99e190ff",
    ),
    "alpaca-7b": (
        "21048628f20187affc7d9c9e756d9618e08c4991fc8a48184612eb484565c5db",
        "41047c654c6c5ddc0290fb207367e3f458d22692045eb41927eb64103a2cb764",
    ),
    "claude-2.1": (
        "75c39fa8e8b38380b7850b422e0f36c5cba3bc5bd8c496a7833cba6f2d72c332",
        "8dfc94501f8b783d96facd9158e0333dc83c30112c5c1927838fdcc2ee00d213",
    ),
    "gpt-3.5-turbo-1106": (
        "e26f2baf2735972c75fa2f540b3685911c616e6d4646219c728e326a49b1c33e",
        "4558bed562144780dfcdd5ff55cafc17d76eea62eca143cfcc7ac5f3c154de10",
    ),
    "Llama-3-Instruct-8B-SimPO": ("dd66f4006899bf5419233a30c072fa6b837bdba6e94d9f46615b2c0ab9fb8416", None),
    "Meta-Llama-3-8B-Instruct": ("c698a502f05b2de1270562073807a6161f0f335f3ed3879ba3666b1d8af1bec6", None),
    "Mistral-7B-Instruct-v0.2": ("d4536ee76a8bfbff745b220da249c6f331242b73b63b8ce18d0f79c234959c36", None),
    "zephyr-7b-beta": ("bc6795b00c6cf6a1315f8b71738356adc7fcb8816d2199faf1a8ab56d982726d", None),
}
for _model, (_outputs, _annotations) in _ALPACA_RESULTS.items():
    _folder = f"alpaca_eval/{'results' if _annotations else 'results_outputs_only'}/{_model}"
    REGISTRY[f"alpaca_eval/outputs/{_model}"] = _ALPACA(
        f"results/{_model}/model_outputs.json", f"{_folder}/model_outputs.json", _outputs
    )
    if _annotations:
        REGISTRY[f"alpaca_eval/annotations/{_model}"] = _ALPACA(
            f"results/{_model}/weighted_alpaca_eval_gpt4_turbo/annotations.json",
            f"{_folder}/weighted_alpaca_eval_gpt4_turbo/annotations.json",
            _annotations,
        )

# Arena-Hard v0.1 official answers (the baseline gpt-4-0314 and two models with official battles).
for _model, _sha in {
    "gpt-4-0314": "0f6abc84de4600fde987d9db70f838f4ecdbd27a2f1f4058c12aa322a6f791b2",
    "gpt-3.5-turbo-0125": "5cfec14570206ec251c3506d36951db87ca869757be75d6075a20120c3cbb616",
    "gpt-4-0613": "055c37c6b230c87413f080c916deba18c6cace3d44b3d456009f1a3d3834a04b",
}.items():
    REGISTRY[f"arena_hard/v0.1/answers/{_model}"] = _ARENA(
        f"data/arena-hard-v0.1/model_answer/{_model}.jsonl",
        f"arena_hard/arena-hard-v0.1/model_answer/{_model}.jsonl",
        _sha,
    )

# MT-Bench official answers of the paper's models (a public fork of FastChat that keeps them in git).
_MT_ANSWERS = {
    "gpt-4": "f65cdce00aa8567e9add118cabd34c2866291ed8f5c1d568f8da9a81d231d3e7",
    "gpt-3.5-turbo": "c3c097c21f91e4b44a554d82e5d47516daf7e8240e13b2eca79d211afc1fdfd6",
    "claude-v1": "884c109de34721859bf7ffa0f7e525dfbc9fb0d99c1ee7c5488bfb2eb8f8c62c",
    "vicuna-13b-v1.3": "0a9bb7f7505d096e32b8a81f89b322cc09bb76d896484150844ce0787cc4caf5",
    "llama-13b": "b96b9f1e0a7e4e669fecfecda1c33908fdc4c095e38346e84352ea254c0b2cbc",
    "alpaca-13b": "80f4a8bf4665839d33fa0ea7f4b58824abf88d5a0edc9e7cc68a362fca88ef98",
}
for _model, _sha in _MT_ANSWERS.items():
    REGISTRY[f"mt_bench/answers/{_model}"] = _github(
        "alvarobartt/FastChat",
        "b25947e558e8d85aae4bc617269a8e66290353e1",
        f"data/mt_bench/model_answer/{_model}.jsonl",
        f"mt_bench/model_answer/{_model}.jsonl",
        _sha,
    )
del _model, _sha, _outputs, _annotations, _folder
