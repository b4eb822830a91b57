"""Synthetic AlpacaEval LC side files, shaped like the HF dataset's (the real ones are a download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_synthetic_lc_support(directory: str | Path, *, n: int = 805, seed: int = 0) -> Path:
    """Write df_gamed.csv (two length-gamed baselines over ``n`` instructions) and
    instruction_difficulty.csv into ``directory``; returns it, for ``alpaca_eval.load_lc_support``."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 1, n)
    frames = []
    for model, shift in [("gpt4_1106_preview_verbose", -1.0), ("gpt4_1106_preview_concise", 1.0)]:
        std_delta_len = rng.normal(shift, 1, n)
        p = 1 / (1 + np.exp(1.5 * np.tanh(std_delta_len) - 0.8 * difficulty - 0.2))
        frames.append(
            pd.DataFrame(
                {
                    "model": model,
                    "index": np.arange(n),
                    "preference": np.clip(p + rng.normal(0, 0.1, n), 0, 1),
                    "std_delta_len": std_delta_len,
                    "instruction_difficulty": difficulty,
                    "not_gamed_baseline": False,
                }
            )
        )
    path = Path(directory)
    pd.concat(frames).to_csv(path / "df_gamed.csv", index=False)
    pd.Series(difficulty, name="instruction_difficulty").to_csv(path / "instruction_difficulty.csv")
    return path
