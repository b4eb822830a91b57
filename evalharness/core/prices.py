"""Judge prices: USD per 1M (prompt, completion) tokens, one table for the planner and the budget.

The shipped defaults are the providers' list prices for standard (synchronous) requests, read on the date
given in ``PRICES_DATE`` from the sources in ``PRICE_SOURCES``. Prices change: a spec overrides them with
``judge: {prices: {MODEL: [PROMPT, COMPLETION]}}``, and a model missing from both has no price (its cost is
reported as unknown, never as zero). The OpenAI Batch API bills half the standard rate (``BATCH_DISCOUNT``).
"""

from __future__ import annotations

from collections.abc import Mapping

PRICES_DATE = "2026-06-21"
PRICE_SOURCES = (
    "https://openai.com/api/pricing (OpenAI model pricing; batch rates: the Batch API page, 50% of standard)",
    "https://ai.google.dev/gemini-api/docs/pricing (Gemini API pricing, prompts up to 200k tokens)",
)
BATCH_DISCOUNT = 0.5

Price = tuple[float, float]

DEFAULT_PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-4-1106-preview": (10.0, 30.0),  # AlpacaEval 2's official judge ("gpt4_turbo")
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4-turbo-2024-04-09": (10.0, 30.0),  # Arena-Hard v0.1's judge
    "gpt-4-0613": (30.0, 60.0),
    "gpt-4": (30.0, 60.0),  # MT-Bench's judge
    "gpt-3.5-turbo-0125": (0.5, 1.5),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4.1": (2.0, 8.0),  # Arena-Hard v2.0's and alpaca_eval's current judge
    "gpt-4.1-2025-04-14": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "o3-mini": (1.1, 4.4),
    "o4-mini": (1.1, 4.4),
    "o3": (2.0, 8.0),
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    # Google (standard tier, prompts up to 200k tokens)
    "gemini-2.5-pro": (1.25, 10.0),  # Arena-Hard v2.0's second judge
    "gemini-2.5-flash": (0.3, 2.5),
}


def price_table(overrides: Mapping[str, tuple[float, float] | list[float]] | None = None) -> dict[str, Price]:
    """The shipped defaults with a spec's ``prices`` laid over them."""
    table = dict(DEFAULT_PRICES)
    for model, pair in (overrides or {}).items():
        prompt, completion = pair
        table[model] = (float(prompt), float(completion))
    return table


def price_of(model: str, overrides: Mapping[str, tuple[float, float] | list[float]] | None = None) -> Price | None:
    """USD per 1M (prompt, completion) tokens for ``model``, or None when nothing prices it."""
    return price_table(overrides).get(model)


def cost_usd(
    model: str,
    prompt_tokens: float,
    completion_tokens: float,
    overrides: Mapping[str, tuple[float, float] | list[float]] | None = None,
    *,
    batch: bool = False,
) -> float | None:
    """The cost of these tokens at ``model``'s price (the batch rate when ``batch``); None without a price."""
    price = price_of(model, overrides)
    if price is None:
        return None
    rate = BATCH_DISCOUNT if batch else 1.0
    return rate * (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6
