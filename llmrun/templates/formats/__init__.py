"""One module per tool-call format family; importing this package registers them all."""

from llmrun.templates.formats import (  # noqa: F401
    command_r,
    deepseek,
    functionary,
    generic,
    gptoss,
    granite,
    hermes,
    llama3,
    mistral,
    phi4,
)

# Detection order (llmrun.templates.calls.detect): the most specific markers first, so that
# a template that mentions another family's marker in passing is still read as its own;
# the generic JSON format, for templates with no tool syntax, last.
ORDER = (
    "gptoss",
    "deepseek",
    "functionary",
    "command_r",
    "granite",
    "phi4",
    "mistral",
    "llama3",
    "hermes",
    "generic",
)
