"""One exception hierarchy. The CLI turns each into one line and an exit code.

A message names the problem; `remedy` says what to do about it. Both end up on
one line of stderr, so keep them short and free of newlines.
"""

from __future__ import annotations


class LlmrunError(Exception):
    """A failure we expected and can explain. Exit code 1 (runtime failure)."""

    exit_code = 1

    def __init__(self, message: str, remedy: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return f"{self.message}; {self.remedy}" if self.remedy else self.message


class BadInput(LlmrunError):
    """Bad usage or bad input: unknown model, bad flag value, bad file. Exit code 2."""

    exit_code = 2


class ModelNotFound(BadInput):
    """MODEL names nothing we can find."""


class BadModelFile(BadInput):
    """A file that is not a usable GGUF: missing, not GGUF, truncated."""


class RegistryError(BadInput):
    """models.toml is malformed: unknown key, bad value."""


class BadOption(BadInput):
    """A flag or parameter value out of range."""


class ContextOverflow(BadInput):
    """The prompt does not fit in the context."""


class StoreError(LlmrunError):
    """The model store could not be read or written."""


class EngineError(LlmrunError):
    """llama.cpp refused to load or run something."""


class EngineStopped(LlmrunError):
    """The batching engine is draining or stopped, and takes no new requests."""


class WorkerError(LlmrunError):
    """An RPC worker could not be reached, or was lost mid-generation."""


class HubError(LlmrunError):
    """The Hugging Face Hub could not give us a model: network, access, a bad download."""
