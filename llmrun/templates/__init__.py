"""Chat templates: rendering with tools, and reading answers back (tool calls, reasoning)."""
