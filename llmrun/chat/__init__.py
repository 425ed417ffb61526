"""Chat: the conversation (`session`, no terminal I/O) and the terminal REPL (`repl`).

The names scripts and tests use are re-exported here; the REPL is imported from
`llmrun.chat.repl` by whoever runs one.
"""

from __future__ import annotations

from llmrun.chat.session import ChatSession, Reply, chat_path, chats_dir, saved_chats

__all__ = ["ChatSession", "Reply", "chat_path", "chats_dir", "saved_chats"]
