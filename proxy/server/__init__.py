"""Running the gateway: ``run`` (a server process with graceful shutdown and SIGHUP
reloads), ``supervisor``/``worker`` (``--workers N``), ``reload`` (validate and swap),
``protocol`` (OpenAI-shaped protocol errors, a deadline for headers) and ``logs``
(bounded repeats)."""

from .run import listen_socket, raise_open_file_limit, run_app, serve
from .supervisor import supervise

__all__ = ["listen_socket", "raise_open_file_limit", "run_app", "serve", "supervise"]
