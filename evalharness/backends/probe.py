"""One cheap request that tells, before a run spends anything, whether an OpenAI-compatible endpoint answers.

``GET {base_url}/models`` costs no generation. A refused connection, a timeout or a rejected key is an
``InputError`` naming the field that holds the URL or the key; any other HTTP answer counts as answering
(some compatible servers do not list models), and a listing that lacks the model is reported as a note.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from evalharness.backends.http import read_api_key
from evalharness.core.errors import InputError


def check_endpoint(
    base_url: str,
    model: str | None = None,
    *,
    api_key_env: str | None = None,
    timeout_s: float = 10.0,
    field: str = "judge",
) -> list[str]:
    """Raise ``InputError`` unless ``base_url`` answers ``GET /models`` (with the key, where one is named); return
    notes (e.g. the model is not among those the endpoint lists)."""
    key = read_api_key(api_key_env)  # a variable that is not set is named before any request
    request = urllib.request.Request(
        base_url.rstrip("/") + "/models",
        headers={
            "Authorization": f"Bearer {key or 'EMPTY'}",
            "User-Agent": "evalharness",
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(1 << 20)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise InputError(
                f"{base_url} refused the key in ${api_key_env} (HTTP {e.code})"
                if api_key_env
                else f"{base_url} needs an API key (HTTP {e.code}): set api_key_env",
                field=f"{field}.api_key_env",
            ) from None
        return []  # it answered: a server without a model list is still a server
    except (OSError, ValueError) as e:  # refused, unreachable, timed out, or not a URL at all
        raise InputError(
            f"the endpoint {base_url} does not answer ({getattr(e, 'reason', e)})", field=f"{field}.base_url"
        ) from None
    try:
        served = [m.get("id") for m in json.loads(body).get("data", [])]
    except (ValueError, AttributeError):
        return []
    if model and served and model not in served:
        return [f"{base_url} does not list the model '{model}' (it lists: {', '.join(map(str, served[:10]))})"]
    return []
