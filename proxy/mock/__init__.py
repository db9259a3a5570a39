"""Built-in fake OpenAI-compatible upstream with per-model fault injection.

Serves ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``
and ``/v1/responses`` (each also without ``/v1``) with deterministic answers and exact token
accounting, plus control endpoints under ``/_mock/`` (``stats``, ``behaviour``, ``reset``).

Token counting (used for every ``prompt_tokens``/``input_tokens`` figure): a text counts one
token per CJK character plus one per maximal run of other non-whitespace characters. A chat
prompt costs ``sum(4 + tokens(message text))`` over its messages (text = string content or the
``text`` of content parts); legacy prompts and embedding inputs cost ``tokens(text)`` (token
arrays: their length); a Responses input costs ``tokens(instructions)`` plus the chat formula
over input items (a plain string input is one user message). Answers are made of exactly
``completion_tokens`` pieces from a fixed list, each piece counting as one token under the same
rule. Everything is self-contained (aiohttp, orjson, stdlib) and state lives on the app.

The parts (names with a leading underscore are internal to the package):

* :mod:`.settings` — ``ModelBehaviour``, ``MockSettings``, ``MockStats``, recorded requests
  and the per-app state;
* :mod:`.tokens` — ``count_tokens`` and the prompt token counts;
* :mod:`.faults` — the prologue of every API request and the injected faults;
* :mod:`.answers` — answer length, pieces, usage, pacing and SSE streaming;
* :mod:`.endpoints` — chat, completions, embeddings, responses, models;
* :mod:`.control` — the ``/_mock/`` API;
* :mod:`.server` — ``create_mock_app`` and ``MockUpstream``;
* :mod:`.cli` — the ``floodgate mock-upstream`` command;
* :mod:`.plugin` — ``MockPlugin``, which serves ``base_url: builtin:mock`` in the gateway and
  adds the command (the ``floodgate`` entry point ``mock``; the core never imports this package).
"""

from .cli import add_arguments, parse_fault, run, serve_forever, settings_from_args
from .plugin import MockPlugin
from .server import MockUpstream, create_mock_app
from .settings import DEFAULT_MODELS, STATE_KEY, MockSettings, MockStats, ModelBehaviour, RecordedRequest
from .tokens import count_tokens

__all__ = [
    "DEFAULT_MODELS", "STATE_KEY", "MockPlugin", "MockSettings", "MockStats", "MockUpstream", "ModelBehaviour",
    "RecordedRequest", "add_arguments", "count_tokens", "create_mock_app", "parse_fault", "run", "serve_forever",
    "settings_from_args",
]
