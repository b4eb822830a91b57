"""The quickstart's movie-review prompt set, written by the project (no download).

Each prompt asks the model to continue an IMDb-style review opening, as in the controlled
sentiment generation task of the DPO paper; openings mix positive, negative and neutral starts
so that the sentiment reward has room to move both ways.
"""

from __future__ import annotations

from typing import Any

_FILMS = [
    "a slow-burning space western",
    "a courtroom drama about a small-town librarian",
    "a musical remake of a 1950s noir",
    "a zombie comedy set in a retirement home",
    "a three-hour biopic of a chess prodigy",
    "an animated film about a lighthouse keeper's cat",
    "a heist thriller on a night train",
    "a quiet family drama set in a fishing village",
    "a found-footage horror film in an abandoned mall",
    "a romantic comedy about two rival bakers",
    "a war epic told from a field hospital",
    "a documentary about deep-sea volcanoes",
    "a superhero sequel nobody asked for",
    "a coming-of-age story at a summer chess camp",
    "a low-budget science-fiction film about time loops",
    "a period piece about a Victorian inventor",
]
# Films only in the held-out split: trained checkpoints are evaluated on films they never saw.
_HELDOUT_FILMS = [
    "a sports drama about an aging goalkeeper",
    "a ghost story set in a ski resort",
    "a political satire about a city council",
    "a road movie across the Australian outback",
    "a spy thriller starring twin sisters",
    "a silent black-and-white comedy made last year",
    "a fantasy adventure about a map that redraws itself",
    "a biopic of a jazz drummer",
]
_OPENINGS = [
    "I went into {film} with low expectations, and",
    "Honestly, {film} is",
    "My friends dragged me to {film}. The first thing I noticed was",
    "I have mixed feelings about {film}:",
    "After watching {film} twice, I can say that",
    "The trailer for {film} promised a lot, but",
    "Nobody warned me that {film} would",
    "Ten minutes into {film}, I realised",
]


def _row(pid: str, film: str, opening: str) -> dict[str, Any]:
    return {
        "id": pid,
        "messages": [
            {
                "role": "user",
                "content": f"Continue this movie review in two or three sentences:\n\n{opening.format(film=film)}",
            }
        ],
    }


def movie_review_prompts(n: int = 80) -> list[dict[str, Any]]:
    """``n`` chat prompts (default 80) as JSONL rows with ``id`` and ``messages`` (training films)."""
    return [_row(f"review-{i:03d}", _FILMS[i % len(_FILMS)], _OPENINGS[(i // len(_FILMS) + i) % 5]) for i in range(n)]


def movie_review_split(split: str) -> list[dict[str, Any]]:
    """The training split (16 films x 8 openings = 128 prompts) or the held-out split (8 other films x 8 = 64)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split is train or heldout, not {split!r}")
    films = _FILMS if split == "train" else _HELDOUT_FILMS
    return [
        _row(f"{split}-{fi:02d}-{oi}", film, op) for fi, film in enumerate(films) for oi, op in enumerate(_OPENINGS)
    ]
