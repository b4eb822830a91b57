"""PPO step of evalharness's loop against TRL's ``trl.experimental.ppo.PPOTrainer``, side by side.

Identical settings: the same tiny random Llama (SmolLM2 tokenizer and chat template, built at run time, loaded by
both from one folder in float32) as policy, reference and critic initialisation; the same reward model (that Llama
with a one-logit classification head: TRL takes it as ``reward_model``, ours as the judge ``hf:DIR``, so both
run one reward forward per episode); the same rendered prompt ids (movie-review chats); response length,
temperature 0.7, stop at EOS, batch 8 episodes per update, 1 minibatch, 4 PPO epochs, kl_coef 0.05, full
fine-tuning, AdamW, constant lr, max_grad_norm 1, fp32, the same torch threads. A random model rarely samples EOS,
so both generate the full response length.
Step time: one PPO update, rollouts + scoring + 4 epochs of optimizer steps (ours: ``step_time_s`` in
metrics.jsonl; TRL: a ``TrainerCallback``, on_step_end to on_step_end), median after --warmup-steps;
episodes/s = batch / step time. Memory: each contender in its own subprocess; peak RSS (ru_maxrss).
Goals: ours >= 1.0x episodes/s, peak RSS <= 1x TRL's.

TRL removed PPOTrainer after 1.12 (huggingface/trl#7020), so the project's ``perf`` extra (TRL >= 1.16, for the
DPO benchmark) does not have it. Install TRL 1.12 into a folder of its own and point --trl-path at it:

    pip install --no-deps --target /tmp/trl112 trl==1.12.0
    python benchmarks/perf/ppo_step.py --trl-path /tmp/trl112 [--steps 6] [--response-length 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dpo_train_step  # the same tiny model builder and memory probe (this folder is on sys.path when run)

CONTENDERS = ("ours", "trl")


def _build(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The DPO benchmark's tiny random Llama as policy, the same weights with a one-logit head as reward model,
    and the prompts file."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from evalharness.data.movie_reviews import movie_review_prompts
    args.pairs = 1  # the DPO builder also writes a pairs file; PPO reads prompts
    built = dpo_train_step._build(workdir, args)
    tok = AutoTokenizer.from_pretrained(built["dir"])
    rm = AutoModelForSequenceClassification.from_pretrained(built["dir"], num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tok.pad_token_id
    rm.save_pretrained(workdir / "reward")
    tok.save_pretrained(workdir / "reward")
    prompts = workdir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in movie_review_prompts(args.prompts)))
    return {**built, "policy": built["dir"], "reward": str(workdir / "reward"), "prompts": str(prompts)}


def _worker_ours(args: argparse.Namespace, out: dict[str, Any]) -> None:
    from evalharness.training.trainer import TrainConfig, train
    res = train(TrainConfig(
        algorithm="ppo", base=args.policy, data=args.prompts_file, learning_rate=args.lr, max_steps=args.steps,
        batch_size=args.batch_size, warmup_ratio=0.0, schedule="constant", max_grad_norm=1.0,
        output_dir=str(Path(args.scratch) / "ours"),
        hparams={"reward": f"hf:{args.reward}", "response_length": args.response_length, "temperature": 0.7,
                 "num_ppo_epochs": 4, "num_mini_batches": 1, "kl_coef": 0.05}))
    out["step_times_s"] = [m["step_time_s"] for m in res.metrics]
    out["response_tokens"] = [m["val/response_length"] for m in res.metrics]


def _worker_trl(args: argparse.Namespace, out: dict[str, Any]) -> None:
    if args.trl_path:
        sys.path.insert(0, args.trl_path)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        import trl
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError as e:
        raise SystemExit(f"TRL's PPOTrainer is not importable ({e}); it was removed after TRL 1.12: "
                         "pip install --no-deps --target DIR trl==1.12.0 and pass --trl-path DIR") from e
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    from evalharness.core.prompts import load_prompts, render
    tok = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    ids = [render(tok, p) for p in load_prompts(args.prompts_file)]  # the very ids ours samples from
    episodes = args.steps * args.batch_size
    ds = Dataset.from_dict({"input_ids": (ids * (episodes // len(ids) + 1))[:max(episodes, len(ids))]})
    cfg = PPOConfig(output_dir=str(Path(args.scratch) / "trl"), per_device_train_batch_size=args.batch_size,
                    gradient_accumulation_steps=1, num_mini_batches=1, num_ppo_epochs=4, total_episodes=episodes,
                    response_length=args.response_length, temperature=0.7, stop_token="eos", kl_coef=0.05,
                    learning_rate=args.lr, lr_scheduler_type="constant", max_grad_norm=1.0, report_to="none",
                    num_sample_generations=0, save_strategy="no", logging_steps=1, use_cpu=True, seed=args.seed,
                    local_rollout_forward_batch_size=args.batch_size, bf16=False, fp16=False)
    load = lambda cls, path, **kw: cls.from_pretrained(path, dtype="float32", **kw)  # noqa: E731
    marks: list[float] = []
    logged: list[dict[str, float]] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            marks.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            marks.append(time.perf_counter())

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict[str, float] | None = None, **k: Any) -> None:
            logged.append(dict(logs or {}))

    trainer = PPOTrainer(args=cfg, processing_class=tok, model=load(AutoModelForCausalLM, args.policy),
                         ref_model=load(AutoModelForCausalLM, args.policy),
                         reward_model=load(AutoModelForSequenceClassification, args.reward, num_labels=1),
                         value_model=load(AutoModelForSequenceClassification, args.reward, num_labels=1),
                         train_dataset=ds, callbacks=[Timer()])
    trainer.train()
    out["trl_version"] = trl.__version__
    out["step_times_s"] = [b - a for a, b in zip(marks, marks[1:])]
    out["objective/kl"] = [x.get("objective/kl") for x in logged if "objective/kl" in x]


def _worker(args: argparse.Namespace) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    out: dict[str, Any] = {"contender": args.worker, "loadavg_1m_start": os.getloadavg()[0]}
    (_worker_ours if args.worker == "ours" else _worker_trl)(args, out)
    out.update(peak_rss_mb=dpo_train_step._peak_rss_mb(), loadavg_1m_end=os.getloadavg()[0])
    Path(args.worker_out).write_text(json.dumps(out, indent=2) + "\n")


def _run(name: str, args: argparse.Namespace, built: dict[str, Any], scratch: Path) -> dict[str, Any]:
    res = scratch / f"{name}.json"
    cmd = [sys.executable, __file__, "--worker", name, "--worker-out", str(res), "--policy", built["policy"],
           "--reward", built["reward"], "--prompts-file", built["prompts"], "--scratch", str(scratch)]
    for k in ("steps", "batch_size", "response_length", "lr", "threads", "seed", "trl_path"):
        if getattr(args, k) is not None:
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore", "ACCELERATE_USE_CPU": "1"}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0 or not res.is_file():
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"worker {name} failed: " + (p.stderr.strip().splitlines() or ["no output"])[-1])
    return json.loads(res.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="PPO updates (rollout batches) per run")
    ap.add_argument("--warmup-steps", type=int, default=1, help="first updates left out of the timing")
    ap.add_argument("--batch-size", type=int, default=8, help="episodes per update")
    ap.add_argument("--response-length", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-6)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same for both")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trl-path", default=None, help="a folder holding trl==1.12.0 (pip install --target)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ppo_step.json"))
    ap.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--policy", help=argparse.SUPPRESS)
    ap.add_argument("--reward", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="ppo-step-") as tmp:
        scratch = Path(tmp)
        built = _build(scratch, args)
        results = {"ours": _run("ours", args, built, scratch)}
        try:
            results["trl"] = _run("trl", args, built, scratch)
        except SystemExit as e:  # say exactly why TRL could not run, and still report ours
            results["trl"] = {"error": str(e)}
    for r in results.values():
        if "step_times_s" in r:
            r["median_step_s"] = statistics.median(r["step_times_s"][args.warmup_steps:])
            r["episodes_per_s"] = args.batch_size / r["median_step_s"]
    ours, trl = results["ours"], results["trl"]
    summary = {"speed_ratio": ours["episodes_per_s"] / trl["episodes_per_s"],
               "peak_rss_ratio": ours["peak_rss_mb"] / trl["peak_rss_mb"]} if "error" not in trl else {}
    report = {"settings": {k: v for k, v in vars(args).items() if not k.startswith("worker")}, "model": built,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "results": results, **summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"ours: {ours['episodes_per_s']:.2f} episodes/s, peak RSS {ours['peak_rss_mb']:.0f} MiB")
    if "error" in trl:
        print(f"TRL's PPOTrainer could not run: {trl['error']}")
        return
    print(f"TRL {trl.get('trl_version')} PPOTrainer: {trl['episodes_per_s']:.2f} episodes/s, "
          f"peak RSS {trl['peak_rss_mb']:.0f} MiB")
    print(f"speed {summary['speed_ratio']:.2f}x (goal >= 1.0x), peak memory {summary['peak_rss_ratio']:.2f}x "
          f"(goal <= 1x); written to {args.out}")
    busy = max(r["loadavg_1m_end"] for r in results.values() if "loadavg_1m_end" in r)
    if busy > args.threads + 0.5:
        print(f"warning: load average {busy:.1f} on {os.cpu_count()} CPUs: other jobs shared the cores")


if __name__ == "__main__":
    main()
