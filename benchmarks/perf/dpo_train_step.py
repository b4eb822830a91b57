"""DPO training step of evalharness's trainer against TRL's ``DPOTrainer``, side by side.

Peers, identical settings: the same tiny random Llama (SmolLM2 tokenizer and chat template, vocab 49152,
tied embeddings; built at run time, both load it from the same folder in float32 with the same loader),
the same pairs (movie-review prompts, synthetic chosen/rejected of ~30-60 tokens; the token ids each
trainer feeds the model are checked to be identical), the same batch (8 pairs, no gradient
accumulation), full fine-tuning in fp32, AdamW, constant lr, no warmup, max_grad_norm 1, beta 0.1,
no gradient checkpointing, the same number of torch threads:
  * ours:            ``evalharness.training.trainer.train`` (reference log-probs precomputed before training)
  * trl-precompute:  ``DPOTrainer(precompute_ref_log_probs=True)``, like for like     goal: ours >= 1.0x samples/s
  * trl:             ``DPOTrainer`` default (reference model forward every step)    for information
Step time: per optimizer step, forward + backward + clip + optimizer step (ours: ``step_time_s``; TRL: a
``TrainerCallback`` from on_step_begin to on_step_end), median over the steps after the first
--warmup-steps; samples/s = pairs per step / step time. Also the cycle time (step end to step end, so
data loading and logging included) and the reference precompute time, both outside the step time.
Memory: each contender runs in its own subprocess (``--worker NAME``); peak RSS (ru_maxrss) and RSS right
after the model is loaded, so the delta is the training overhead. Goal: ours' peak not above TRL's.
Contenders are interleaved over --rounds rounds (order rotated); medians over rounds are reported.
Both must compute the same thing: the first step's loss is ln 2 (policy == reference at init).
Differences left as each trainer ships them (recorded in the JSON): both use fused AdamW; without Triton
(CPU) TRL's chunked LM head scores every
position, prompt and padding included, and computes its logging metrics (entropy, mean logit, top-1) too,
where ours computes logits for response positions only. On a busy machine (cpu_util well below --threads)
the numbers mean little: OpenMP threads fighting other jobs slow small ops far more than large ones.

    pip install 'evalharness[perf]'   # TRL, only for this benchmark
    python benchmarks/perf/dpo_train_step.py [--steps 10] [--rounds 3] [--batch-size 8] [--pairs 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONTENDERS = ("ours", "trl-precompute", "trl")
LN2 = math.log(2)


def _rss_mb() -> float:
    """Current resident set size (MiB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------- setup (parent process)

_GOOD = ["The pacing is deliberate but never dull, and every scene earns its place.",
         "The lead performance is warm, funny and surprisingly moving.",
         "By the final act I was completely invested in these characters.",
         "The cinematography turns ordinary streets into something magical.",
         "It is the rare film that trusts its audience to keep up.",
         "The score swells at exactly the right moments without ever feeling manipulative.",
         "I laughed more than I expected and left the cinema smiling.",
         "The script is sharp, with dialogue that sounds like real people talking."]
_BAD = ["The pacing drags, and half the scenes could have been cut.",
        "The lead looks bored, and honestly so was I.",
        "By the final act I had stopped caring what happened to anyone.",
        "The cinematography is muddy and the editing is confusing.",
        "It explains every joke twice, just in case you missed it.",
        "The score is loud and tells you what to feel in every single scene.",
        "I checked my watch more often than I want to admit.",
        "The script is full of clumsy exposition and lines nobody would ever say."]


def _pairs(tok: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """n preference pairs on the project's movie-review prompts; responses of ~30-60 tokens."""
    from evalharness.data.movie_reviews import movie_review_prompts
    rng = random.Random(seed)

    def text(pool: list[str]) -> str:
        target = rng.randint(30, 50)
        sents: list[str] = []
        while len(tok(" ".join(sents), add_special_tokens=False)["input_ids"]) < target:
            sents.append(rng.choice(pool))
        return " ".join(sents)
    return [{"id": row["id"], "prompt": row["messages"], "chosen": text(_GOOD), "rejected": text(_BAD)}
            for row in movie_review_prompts(n)]


def _build(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The tiny random Llama (SmolLM2 tokenizer) and the pairs file, written under workdir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from evalharness.core.models import resolve
    src = resolve("smollm2").path
    tok = AutoTokenizer.from_pretrained(src)
    cfg = AutoConfig.from_pretrained(src)
    cfg.update(dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                    num_key_value_heads=args.heads, head_dim=args.hidden // args.heads,
                    intermediate_size=args.intermediate, tie_word_embeddings=True, dtype="float32"))
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model_dir = workdir / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = workdir / "pairs.jsonl"
    rows = _pairs(tok, args.pairs, args.seed)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    n_params = sum(p.numel() for p in model.parameters())
    return {"dir": str(model_dir), "params": n_params, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads, "intermediate_size": cfg.intermediate_size,
            "tie_word_embeddings": True, "data": str(data)}


# --------------------------------------------------------------------------- workers (one subprocess each)

def _encoded(tok: Any, data: str) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) token ids as the evalharness trainer builds them (no truncation needed here)."""
    from evalharness.core.prompts import render
    from evalharness.training.data import load_preferences
    eos = tok.eos_token_id
    return [(render(tok, p.prompt), tok(p.chosen, add_special_tokens=False)["input_ids"] + [eos],
             tok(p.rejected, add_special_tokens=False)["input_ids"] + [eos]) for p in load_preferences(data)]


def _summary(step_times: list[float], cycle_times: list[float], args: argparse.Namespace) -> dict[str, Any]:
    timed = step_times[args.warmup_steps:]
    cycles = cycle_times[max(0, args.warmup_steps - 1):]
    med = statistics.median(timed)
    return {"step_times_s": [round(t, 4) for t in step_times], "median_step_s": med,
            "mean_step_s": statistics.fmean(timed), "samples_per_s": args.batch_size / med,
            "median_cycle_s": statistics.median(cycles) if cycles else None,
            "cycle_samples_per_s": args.batch_size / statistics.median(cycles) if cycles else None}


def _worker_ours(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from evalharness.core import models
    from evalharness.training.trainer import TrainConfig, train

    ref = models.resolve(args.model_dir)
    loaded = models.load_fresh(ref, dtype="float32")  # the very loader train() uses; hoisted to measure RSS
    out["rss_after_load_mb"] = _rss_mb()
    real = models.load_fresh
    models.load_fresh = lambda r, dtype="float32": loaded if r.path == ref.path else real(r, dtype=dtype)
    marks: dict[str, float] = {}

    def log(msg: str) -> None:
        t = time.perf_counter()
        if msg.startswith("reference log-probs"):
            marks["ref_start"] = t
        elif " steps of " in msg and "ref_start" in marks and "loop_start" not in marks:
            marks["loop_start"] = t
    c0, t0 = _cpu_s(), time.perf_counter()
    res = train(TrainConfig(
        algorithm="dpo", base=args.model_dir, data=args.data, hparams={"beta": args.beta},
        learning_rate=args.lr, max_steps=args.steps, batch_size=args.batch_size, grad_accum=1, max_grad_norm=1.0,
        warmup_ratio=0.0, schedule="constant", weight_decay=0.0, max_length=args.max_length,
        max_prompt_length=args.max_prompt_length, seed=args.seed, save_every=0, dtype="float32",
        output_dir=str(Path(args.scratch) / "ours-run")), log=log)
    total = time.perf_counter() - t0
    out["cpu_util"] = (_cpu_s() - c0) / total  # CPU seconds per wall second: ~threads when the machine is quiet
    m = res.metrics
    elapsed = [r["elapsed_s"] for r in m]
    out.update(_summary([r["step_time_s"] for r in m], [b - a for a, b in zip(elapsed, elapsed[1:])], args))
    out.update(first_step_loss=m[0]["loss"], last_step_loss=m[-1]["loss"],
               precompute_s=marks["loop_start"] - marks["ref_start"],  # includes optimizer creation (negligible)
               setup_s=marks["loop_start"] - t0, train_call_s=total,
               after_loop_s=total - (marks["loop_start"] - t0) - elapsed[-1],  # final checkpoint save
               optimizer="torch.optim.AdamW (fused)")


def _worker_trl(args: argparse.Namespace, out: dict[str, Any], precompute: bool) -> None:
    try:
        import trl
        from trl import DPOConfig, DPOTrainer
    except ImportError:
        raise SystemExit("trl is not installed: pip install 'evalharness[perf]'") from None
    from datasets import Dataset
    from transformers import TrainerCallback

    from evalharness.core import models
    from evalharness.training.data import load_preferences

    model, tok = models.load_fresh(models.resolve(args.model_dir), dtype="float32")  # same loader as ours
    out["rss_after_load_mb"] = _rss_mb()
    # The prompt rendered by the same chat template as ours, the responses as text: TRL appends EOS.
    rows = [{"prompt": tok.apply_chat_template(p.prompt.chat(), add_generation_prompt=True, tokenize=False),
             "chosen": p.chosen, "rejected": p.rejected} for p in load_preferences(args.data)]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self.ends: list[float] = []
            self.t = 0.0

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            now = time.perf_counter()
            self.steps.append(now - self.t)
            self.ends.append(now)

    timer = Timer()
    pre: dict[str, float] = {}
    orig_pre = DPOTrainer._precompute_ref_logps

    def timed_pre(self: Any, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        r = orig_pre(self, *a, **k)
        pre["s"] = pre.get("s", 0.0) + time.perf_counter() - t
        return r
    DPOTrainer._precompute_ref_logps = timed_pre  # type: ignore[method-assign]
    cfg = DPOConfig(
        output_dir=str(Path(args.scratch) / "trl-run"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=args.beta, loss_type=["sigmoid"],
        max_length=args.max_length, precompute_ref_log_probs=precompute, gradient_checkpointing=False,
        bf16=False, fp16=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to=[],
        dataloader_num_workers=0, disable_tqdm=True, seed=args.seed, data_seed=args.seed)
    c0, t0 = _cpu_s(), time.perf_counter()
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[timer])
    setup = time.perf_counter() - t0
    # Same token ids as ours, or the comparison is void.
    ds = trainer.train_dataset
    mine = _encoded(tok, args.data)
    out["tokens_identical"] = all(
        (list(p), list(c), list(r)) == m for p, c, r, m in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], mine)
    ) and len(ds) == len(mine)
    first: dict[str, float] = {}
    orig_loss = trainer.compute_loss

    def compute_loss(*a: Any, **k: Any) -> Any:
        loss = orig_loss(*a, **k)
        if "loss" not in first:
            first["loss"] = float(loss.detach())
        return loss
    trainer.compute_loss = compute_loss  # type: ignore[method-assign]
    t1 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t1
    out["cpu_util"] = (_cpu_s() - c0) / (time.perf_counter() - t0)  # as ours: trainer setup + training
    out.update(_summary(timer.steps, [b - a for a, b in zip(timer.ends, timer.ends[1:])], args))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    out.update(first_step_loss=first["loss"], last_step_loss=losses[-1] if losses else None,
               precompute_s=pre.get("s"), setup_s=setup, train_call_s=total, trl_version=trl.__version__,
               optimizer=str(cfg.optim), ref_model_in_memory=trainer.ref_model is not None)


def _worker(args: argparse.Namespace) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    out: dict[str, Any] = {"contender": args.worker, "loadavg_1m_start": os.getloadavg()[0]}
    if args.worker == "ours":
        _worker_ours(args, out)
    else:
        _worker_trl(args, out, precompute=args.worker == "trl-precompute")
    out.update(peak_rss_mb=_peak_rss_mb(), torch_threads=torch.get_num_threads(), loadavg_1m_end=os.getloadavg()[0])
    out["delta_rss_mb"] = out["peak_rss_mb"] - out["rss_after_load_mb"]
    Path(args.worker_out).write_text(json.dumps(out, indent=2) + "\n")


# --------------------------------------------------------------------------- driver

def _run_worker(name: str, args: argparse.Namespace, built: dict[str, Any], scratch: Path) -> dict[str, Any]:
    res = scratch / f"{name}.json"
    cmd = [sys.executable, __file__, "--worker", name, "--worker-out", str(res), "--model-dir", built["dir"],
           "--data", built["data"], "--scratch", str(scratch)]
    for k in ("steps", "warmup_steps", "batch_size", "lr", "beta", "max_length", "max_prompt_length", "threads", "seed"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(scratch / "hf-datasets"),  # fresh: TRL must not reuse cached reference log-probs
           "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0 or not res.is_file():
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"worker {name} failed")
    return json.loads(res.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    ap.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the timing")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repeats of every contender (medians kept)")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--max-prompt-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same for every contender")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dpo_train_step.json"))
    # worker mode (internal)
    ap.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if any(c.startswith("trl") for c in contenders):
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("trl is not installed: pip install 'evalharness[perf]'") from None
    if args.steps <= args.warmup_steps + 1:
        raise SystemExit("--steps must exceed --warmup-steps + 1")

    import torch
    import transformers
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="evalharness-dpo-bench-") as tmp:
        built = _build(Path(tmp), args)
        print(f"model: random Llama, {built['params'] / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers, "
              f"vocab {built['vocab_size']}); {args.pairs} pairs, {args.batch_size} per step, {args.steps} steps "
              f"(first {args.warmup_steps} untimed), {args.threads} threads, {args.rounds} rounds", flush=True)
        runs: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]  # rotate: no fixed position
            for name in order:
                scratch = Path(tmp) / f"r{r}-{name}"
                scratch.mkdir()
                res = _run_worker(name, args, built, scratch)
                res["round"] = r
                runs.append(res)
                print(f"round {r + 1}/{args.rounds} {name:15s} {res['samples_per_s']:6.2f} samples/s "
                      f"(median step {res['median_step_s']:.3f} s)  peak RSS {res['peak_rss_mb']:7.0f} MiB  "
                      f"first loss {res['first_step_loss']:.6f}  cpu {res['cpu_util']:.2f}/{args.threads} "
                      f"load {res['loadavg_1m_start']:.1f}", flush=True)
        data_stats = _data_stats(built)

    def med(name: str, key: str) -> float | None:
        vals = [x[key] for x in runs if x["contender"] == name and x.get(key) is not None]
        return statistics.median(vals) if vals else None
    keys = ("samples_per_s", "median_step_s", "cycle_samples_per_s", "median_cycle_s", "peak_rss_mb",
            "rss_after_load_mb", "delta_rss_mb", "precompute_s", "setup_s", "train_call_s", "first_step_loss")
    rows = {c: {k: (round(v, 6 if k == "first_step_loss" else 4) if v is not None else None) for k in keys
                for v in [med(c, k)]} for c in contenders}
    for c in contenders:
        rows[c]["first_step_losses"] = [round(x["first_step_loss"], 6) for x in runs if x["contender"] == c]
    trl_runs = [x for x in runs if x["contender"].startswith("trl")]
    result: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "worker_out", "model_dir", "data", "scratch")},
        "machine": {"cpu_threads": args.threads, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "trl": trl_runs[0]["trl_version"] if trl_runs else None},
        "model": {k: v for k, v in built.items() if k not in ("dir", "data")},
        "data": data_stats,
        "tokens_identical": all(x["tokens_identical"] for x in trl_runs) if trl_runs else None,
        "optimizers": {x["contender"]: x["optimizer"] for x in runs},
        "results": rows,
        "runs": runs,
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    busy = [x for x in runs if x["cpu_util"] < 0.8 * args.threads]
    if busy:
        print(f"WARNING: {len(busy)} of {len(runs)} runs got < 80% of {args.threads} cores (other jobs?): "
              "timings are unreliable", file=sys.stderr)
    result["busy_runs"] = len(busy)
    for c in contenders:
        for x in runs:
            if x["contender"] == c and abs(x["first_step_loss"] - LN2) > 1e-4:
                print(f"WARNING: {c} first-step loss {x['first_step_loss']:.6f} != ln 2", file=sys.stderr)
    ratios: dict[str, Any] = {}
    if "ours" in rows:
        o = rows["ours"]
        for peer in ("trl-precompute", "trl"):
            if peer in rows:
                p = rows[peer]
                ratios[f"samples_per_s_vs_{peer}"] = round(o["samples_per_s"] / p["samples_per_s"], 3)
                ratios[f"cycle_samples_per_s_vs_{peer}"] = round(o["cycle_samples_per_s"] / p["cycle_samples_per_s"], 3)
                ratios[f"peak_rss_vs_{peer}"] = round(o["peak_rss_mb"] / p["peak_rss_mb"], 3)
                ratios[f"delta_rss_vs_{peer}"] = round(o["delta_rss_mb"] / p["delta_rss_mb"], 3)
                # paired within each round (robust to load that changes between rounds)
                per_round = [x["samples_per_s"] / y["samples_per_s"] for x in runs if x["contender"] == "ours"
                             for y in runs if y["contender"] == peer and y["round"] == x["round"]]
                ratios[f"samples_per_s_vs_{peer}_per_round"] = [round(v, 3) for v in per_round]
        if "trl-precompute" in rows:
            ratios["goal_samples_per_s_met"] = ratios["samples_per_s_vs_trl-precompute"] >= 1.0
            ratios["goal_peak_rss_met"] = rows["ours"]["peak_rss_mb"] <= rows["trl-precompute"]["peak_rss_mb"]
    result["ratios"] = ratios

    print(f"\n{'contender':16s} {'samples/s':>9s} {'step s':>7s} {'cycle/s':>8s} {'peak MiB':>9s} {'load MiB':>9s} "
          f"{'delta MiB':>9s} {'precomp s':>9s} {'loss@1':>8s}")
    for c, v in rows.items():
        pre = f"{v['precompute_s']:9.2f}" if v["precompute_s"] is not None else f"{'-':>9s}"
        print(f"{c:16s} {v['samples_per_s']:9.2f} {v['median_step_s']:7.3f} {v['cycle_samples_per_s']:8.2f} "
              f"{v['peak_rss_mb']:9.0f} {v['rss_after_load_mb']:9.0f} {v['delta_rss_mb']:9.0f} {pre} "
              f"{v['first_step_loss']:8.6f}")
    for peer in ("trl-precompute", "trl"):
        if f"samples_per_s_vs_{peer}" in ratios:
            goal = " (goal >= 1.0)" if peer == "trl-precompute" else ""
            rounds = ", ".join(f"{v:.2f}" for v in ratios[f"samples_per_s_vs_{peer}_per_round"])
            print(f"ours vs {peer:15s} samples/s {ratios[f'samples_per_s_vs_{peer}']:.2f}x{goal} (per round {rounds}), "
                  f"peak RSS {ratios[f'peak_rss_vs_{peer}']:.2f}x, training delta {ratios[f'delta_rss_vs_{peer}']:.2f}x")
    if result["tokens_identical"] is not None:
        print(f"token ids identical to TRL's: {result['tokens_identical']}; wall {result['wall_s']:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def _data_stats(built: dict[str, Any]) -> dict[str, Any]:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(built["dir"])
    enc = _encoded(tok, built["data"])

    def st(xs: list[int]) -> dict[str, float]:
        return {"min": min(xs), "mean": round(statistics.fmean(xs), 1), "max": max(xs)}
    return {"pairs": len(enc), "prompt_tokens": st([len(p) for p, _, _ in enc]),
            "chosen_tokens_with_eos": st([len(c) for _, c, _ in enc]),
            "rejected_tokens_with_eos": st([len(r) for _, _, r in enc])}


if __name__ == "__main__":
    main()
