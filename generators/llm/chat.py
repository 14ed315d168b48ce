"""The request and result dicts every LLM backend speaks, and the sampling settings stages configure."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FINISH_STOP = "stop"  # the model ended the answer (or its JSON was complete)
FINISH_LENGTH = "length"  # cut at max_new_tokens
FINISH_ERROR = "error"  # the backend could not serve the request


class Sampling(BaseModel):
    """Sampling settings of one LLM step; temperature 0 is greedy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, ge=1)


def chat_request(messages: list[dict[str, str]], seed: int, sampling: Sampling,
                 schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request: ``messages`` as the chat template expects them (``role``/``content``)."""
    return {"messages": messages, "seed": int(seed), "temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_new_tokens": sampling.max_new_tokens, "schema": schema}


def chat_result(text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int,
                error: str | None = None) -> dict[str, Any]:
    return {"text": text, "parsed": parse_json(text) if finish_reason == FINISH_STOP else None,
            "finish_reason": finish_reason, "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens), "error": error}


def error_result(error: BaseException | str) -> dict[str, Any]:
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"text": "", "parsed": None, "finish_reason": FINISH_ERROR, "prompt_tokens": 0, "completion_tokens": 0,
            "error": " ".join(message.split())[:500]}


def parse_json(text: str) -> Any:
    """The JSON value of ``text`` (strict: raw control characters inside strings are errors), or None."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None


def seed_from(seed: int) -> int:
    """Seeds as the backends take them: non-negative and below 2**63."""
    return int(seed) % (2**63)
