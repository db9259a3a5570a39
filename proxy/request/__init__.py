"""The request's way through, split by stage.

- ``gateway``: the stage sequence and the request's life (context, errors, disconnects, finished);
- ``parse``: read and check the body (stage 1);
- ``attempts``: ask ``proxy_next_attempt``, send, record (stage 6);
- ``respond``: a JSON answer, upstream or short-circuit (stage 7);
- ``stream``: an SSE answer relayed event by event (stage 7), with ``sse`` parsing the events;
- ``passthrough``: paths the gateway does not implement; ``models``: the model list;
- ``render``: bodies Floodgate writes itself.
"""

from .gateway import MODEL_ENDPOINTS, REQUEST_CONTEXT, Gateway, request_principal

__all__ = ["MODEL_ENDPOINTS", "REQUEST_CONTEXT", "Gateway", "request_principal"]
