"""One module per tool-call format family; importing this package registers them all.

The import order is the detection order (llmrun.templates.calls.detect): the
formats with the most specific markers first, the generic JSON one last.
"""

from llmrun.templates.formats import (  # noqa: F401
    gptoss,
    deepseek,
    functionary,
    command_r,
    granite,
    phi4,
    mistral,
    llama3,
    hermes,
    generic,
)
