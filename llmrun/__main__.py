from __future__ import annotations

from llmrun.cli import main

main()
