"""The chat at a terminal: the REPL loop, its slash commands (one table) and /set parsing.

The conversation itself is `llmrun.chat.session.ChatSession`; this module reads input (readline:
line editing, history in LLMRUN_HOME/chat_history, bracketed paste, `\"\"\"` blocks), runs the
slash commands, and prints the replies; `answer_all` does the same for piped stdin, replies only.
It writes to stderr through a `Terminal` the CLI hands it, so the CLI keeps its one console.
"""

from __future__ import annotations

import contextlib
import math
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape

from llmrun import store
from llmrun.chat.session import ChatSession, Reply, saved_chats
from llmrun.engine import Stats
from llmrun.engine.images import Image, read_image_file
from llmrun.errors import BadInput, BadOption, LlmrunError
from llmrun.options import FLAG_NAMES, PARAM_TYPES, SAMPLING_CHECKS, spellings

PROMPT = ">>> "
MORE = "... "  # inside a \"\"\" block
BLOCK = '"""'
LEAVE_HINT = "Use Ctrl-D or /bye to exit"  # Ctrl-C at an empty prompt: what leaves
HISTORY_FILE = "chat_history"
HISTORY_SIZE = 1000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
# A path in a message: quoted, or a run of non-spaces (and backslash-escaped spaces, as a
# terminal writes a dragged file's path), ending in an image suffix.
_IMAGE_PATH = re.compile(r"""'([^']+)'|"([^"]+)"|((?:\\ |[^\s'"])+)""", re.IGNORECASE)


def split_image_paths(text: str) -> tuple[str, list[Path]]:
    """The message without the paths of existing image files in it, and those paths: a file
    dragged into the terminal attaches the image, as in Ollama."""
    paths: list[Path] = []

    def take(match: re.Match[str]) -> str:
        word = next(g for g in match.groups() if g is not None)
        tail = ""
        if match.group(3) is not None:  # unquoted: punctuation after it is the sentence's
            stripped = word.rstrip("?!.,;:)")
            word, tail = stripped, word[len(stripped) :]
        path = Path(word.replace("\\ ", " ")).expanduser()
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            paths.append(path)
            return tail
        return match.group(0)

    rest = _IMAGE_PATH.sub(take, text)
    return (" ".join(rest.split()) if paths else text), paths


@dataclass(frozen=True)
class Terminal:
    """Where the chat writes besides the replies: the CLI's stderr console and its formats."""

    err: Console
    error: Callable[..., None]  # (message, remedy=None), as the CLI prints errors
    stats: Callable[[Stats], None]

    def notice(self, text: str) -> None:
        self.err.print(text, style="dim", markup=False)

    def thinking(self, text: str) -> None:
        self.err.print(text, style="dim", markup=False, highlight=False, end="")


def note_dropped(term: Terminal, reply: Reply, n_ctx: int) -> None:
    if reply.dropped:
        term.notice(
            f"dropped the {reply.dropped} oldest turn(s) to fit the context ({n_ctx} tokens)"
        )


def note_context_end(term: Terminal, reply: Reply, n_ctx: int) -> None:
    if reply.stop_reason == "context":
        term.notice(
            f"the reply reached the end of the context ({n_ctx} tokens); "
            "the oldest turns will make room for the next"
        )


# ---------------------------------------------------------------- input


class LineReader:
    """input() with readline when there is one: editing, history across sessions, paste."""

    def __init__(self, history: Path | None) -> None:
        self.history = history
        try:
            import readline
        except ImportError:  # Windows without pyreadline: plain input() still works
            self.readline = None
            return
        self.readline = readline
        if "libedit" not in (readline.__doc__ or ""):
            # CPython turns bracketed paste off; with it on, a pasted block is one message.
            readline.parse_and_bind("set enable-bracketed-paste on")
        if history is not None:
            with contextlib.suppress(OSError):
                readline.read_history_file(history)
            readline.set_history_length(HISTORY_SIZE)
            with contextlib.suppress(OSError), store.atomic_write(history) as tmp:
                readline.write_history_file(tmp)  # trimmed to HISTORY_SIZE

    def __call__(self, prompt: str) -> str:
        rl = self.readline
        before = rl.get_current_history_length() if rl else 0
        line = input(prompt)
        if rl and self.history is not None and rl.get_current_history_length() > before:
            with contextlib.suppress(OSError):  # a history we cannot write is no reason to stop
                rl.append_history_file(1, self.history)
        return line

    def typed(self) -> str:
        """What was on the line when Ctrl-C came."""
        return self.readline.get_line_buffer() if self.readline else ""


# ---------------------------------------------------------------- the REPL


@dataclass(frozen=True)
class Command:
    run: Callable[[Repl, str], bool | None]  # True: leave the chat
    help: str
    args: str = ""


class Repl:
    def __init__(
        self,
        session: ChatSession,
        term: Terminal,
        *,
        markdown: bool,
        verbose: bool,
        hide_thinking: bool = False,
    ) -> None:
        self.session = session
        self.term = term
        self.hide_thinking = hide_thinking
        self.markdown = markdown and sys.stdout.isatty()
        self.verbose = verbose
        self.read = LineReader(store.home() / HISTORY_FILE)
        self.out = Console(highlight=False, emoji=False)  # stdout, for Markdown
        self.images: list[Image] = []  # attached with /image, sent with the next message

    def loop(self) -> None:
        n_ctx = self.session.model.n_ctx
        self.term.notice(
            f"{self.session.name} · context {n_ctx} tokens · "
            f"/help for commands, /bye or Ctrl-D to leave"
        )
        while (text := self.read_message()) is not None:
            try:
                if text.startswith("/") and "\n" not in text and not self.is_dragged(text):
                    if self.command(text):
                        return
                elif text.strip():
                    self.send(text.strip())
            except LlmrunError as e:
                self.term.error(str(e))
            except KeyboardInterrupt:  # during a command: stop it, keep the chat
                sys.stdout.write("\n")

    def is_dragged(self, text: str) -> bool:
        """A line that starts with an image file's path (dragged in) is a message."""
        return bool(split_image_paths(text.split(" ", 1)[0])[1])

    def send(self, text: str) -> None:
        """Send a message with the images attached to it (/image, or paths in the text)."""
        text, paths = split_image_paths(text)
        images = [*self.images, *(read_image_file(p) for p in paths)]
        reply = self.session.send(text, images)
        self.images = []
        self.show(reply)

    def read_message(self) -> str | None:
        """The next message or command; None to leave (Ctrl-D).

        Ctrl-C clears a typed line; at an empty prompt it says how to leave and stays, as
        python's, bash's and Ollama's prompts do: a Ctrl-C meant for a reply that just ended
        must not end the chat.
        """
        while True:
            try:
                line = self.read(PROMPT)
                if line.lstrip().startswith(BLOCK):
                    return self.read_block(line.lstrip()[len(BLOCK) :])
                return line
            except EOFError:
                sys.stdout.write("\n")
                return None
            except KeyboardInterrupt:
                empty = not self.read.typed()
                sys.stdout.write("\n")  # like a shell: drop the line, prompt again
                if empty:
                    sys.stdout.flush()
                    self.term.notice(LEAVE_HINT)

    def read_block(self, text: str) -> str:
        """The text up to a closing \"\"\" (which may end the first line); Ctrl-C drops it."""
        while not text.rstrip().endswith(BLOCK):
            try:
                text += "\n" + self.read(MORE)
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                return ""
        return text.rstrip()[: -len(BLOCK)].strip()

    def command(self, text: str) -> bool:
        name, _, arg = text.strip().partition(" ")
        cmd = COMMANDS.get(name.lower())
        if cmd is None:
            self.term.error(
                f"unknown command {name}",
                "/help lists them; start the line with a space to send it as a message",
            )
            return False
        return bool(cmd.run(self, arg.strip()))

    def show(self, reply: Reply) -> None:
        """Stream a reply to stdout; Ctrl-C stops it and keeps what came."""
        n_ctx = self.session.model.n_ctx
        note_dropped(self.term, reply, n_ctx)
        out = sys.stdout
        try:
            self.write(reply)
        except KeyboardInterrupt:
            pass
        finally:
            reply.close()
        if not reply.text.endswith("\n"):
            out.write("\n")
        out.flush()
        if reply.interrupted:
            self.term.notice("[interrupted]")
        elif reply.stop_reason == "context":
            note_context_end(self.term, reply, n_ctx)
        elif self.markdown:
            self.render_markdown(reply.text)
        if self.verbose and reply.stats:
            self.term.stats(reply.stats)

    def write(self, reply: Reply) -> None:
        """The answer on stdout; thinking dimmed on stderr, unless hidden."""
        write_reply(reply, self.term, show_thinking=not self.hide_thinking)

    def render_markdown(self, text: str) -> None:
        """Replace the streamed text by its Markdown rendering, when all of it is on screen."""
        size = shutil.get_terminal_size()
        rows = screen_rows(text, size.columns)
        if rows >= size.lines:
            return  # the top has scrolled away and cannot be redrawn
        sys.stdout.write(f"\x1b[{rows}F\x1b[J")  # to the first line of the reply, then erase
        self.out.print(Markdown(text))

    # ------------------------------------------------------------ commands

    def cmd_help(self, _: str) -> None:
        for name, cmd in COMMANDS.items():
            self.term.err.print(f"  {escape(name + ' ' + cmd.args):<18} {escape(cmd.help)}")
        self.term.err.print(
            f"  {BLOCK} ... {BLOCK:<9} a message of several lines (a paste works too)\n"
            "  Ctrl-C             stop the reply; clear the line\n"
            "  Ctrl-D             leave",
            markup=False,
        )

    def cmd_exit(self, _: str) -> bool:
        return True

    def cmd_clear(self, _: str) -> None:
        self.session.clear()
        self.term.notice("new conversation")

    def cmd_system(self, arg: str) -> None:
        if not arg:
            current = self.session.system
            self.term.notice(f"system prompt: {current}" if current else "no system prompt set")
            return
        self.session.set("system", arg)
        self.term.notice("system prompt set")

    def cmd_set(self, arg: str) -> None:
        if not arg:
            for name, value in self.session.options().items():
                self.term.err.print(f"  {name:<15} {value!r}", markup=False)
            return
        name, value = parse_setting(arg)
        self.session.set(name, value)
        self.term.notice(f"{name} = {value!r}")

    def cmd_show(self, _: str) -> None:
        s = self.session
        turns = sum(m["role"] == "user" for m in s.messages)
        dropped = sum(m["role"] == "user" for m in s.messages[: s.start])
        options = ", ".join(f"{k}={v!r}" for k, v in s.options().items())
        for label, value in (
            ("model", f"{s.name} ({s.model.path})"),
            ("context", f"{s.context_used()} / {s.model.n_ctx} tokens"),
            ("turns", f"{turns}" + (f" ({dropped} out of the window)" if dropped else "")),
            ("system", s.system if s.system is not None else "(the template's default)"),
            ("options", options),
        ):
            self.term.err.print(f"  {label:<8} {value}", markup=False)

    def cmd_save(self, arg: str) -> None:
        if not arg:
            raise BadInput("usage: /save NAME")
        path = self.session.save(arg)
        self.term.notice(f"saved {len(self.session.messages)} messages to {path}")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            self.term.notice(f"saved chats: {', '.join(saved_chats()) or 'none yet'}")
            return
        data = self.session.load(arg)
        note = f" (saved with {data['model']})" if data.get("model") != self.session.name else ""
        self.term.notice(f"loaded {len(self.session.messages)} messages from {arg}{note}")

    def cmd_image(self, arg: str) -> None:
        if not arg:
            raise BadInput("usage: /image PATH")
        if self.session.model.images is None:
            raise BadInput(
                f"{self.session.name} cannot read images: it has no projector",
                "chat with a vision model, or give its projector with --mmproj FILE",
            )
        path = Path(arg.strip("'\"").replace("\\ ", " ")).expanduser()
        self.images.append(read_image_file(path))
        self.term.notice(f"attached {path.name}: it goes with your next message")

    def cmd_retry(self, _: str) -> None:
        self.show(self.session.retry())

    def cmd_stats(self, _: str) -> None:
        last = self.session.last
        if last is None or last.stats is None:
            self.term.notice("no reply yet")
            return
        st = last.stats
        self.term.err.print(
            f"  prompt {st.prompt_tokens} tokens evaluated, {st.reused_tokens} reused from cache"
            f"\n  first token after {st.first_token_seconds:.3f} s"
            f"\n  {st.gen_tokens} tokens at {st.gen_tps:.1f} tokens/s, stopped by {st.stop_reason}",
            markup=False,
        )


COMMANDS: dict[str, Command] = {
    "/help": Command(Repl.cmd_help, "this list"),
    "/exit": Command(Repl.cmd_exit, "leave (also /bye)"),
    "/bye": Command(Repl.cmd_exit, "leave"),
    "/clear": Command(Repl.cmd_clear, "a new conversation (keeps the system prompt and settings)"),
    "/system": Command(Repl.cmd_system, "set the system prompt (alone: show it)", "TEXT"),
    "/set": Command(
        Repl.cmd_set, "set a sampling option, e.g. /set temp 0.7 (alone: list them)", "NAME VALUE"
    ),
    "/show": Command(Repl.cmd_show, "model, context used, options"),
    "/save": Command(Repl.cmd_save, "save the conversation to LLMRUN_HOME/chats/NAME.json", "NAME"),
    "/load": Command(Repl.cmd_load, "load a saved conversation (alone: list them)", "NAME"),
    "/retry": Command(Repl.cmd_retry, "generate the last reply again"),
    "/image": Command(Repl.cmd_image, "attach an image to the next message", "PATH"),
    "/stats": Command(
        Repl.cmd_stats, "prompt tokens, time to first token, tokens/s of the last reply"
    ),
}

# What /set accepts: the parameter names and the flags' spellings (system is its own).
SET_SPELLINGS = spellings("set")
PARSERS: dict[type, Callable[[str], Any]] = {float: float, int: int, str: str, list: shlex.split}
CLEAR_WORDS = ("none", "off", "''", '""')


def parse_setting(arg: str) -> tuple[str, Any]:
    """`temp 0.7` -> ("temp", 0.7); flag spellings (`--top-k`, `-n`) work too."""
    word, _, raw = arg.partition(" ")
    key = word.lstrip("-").replace("-", "_").lower()
    name = SET_SPELLINGS.get(key, key)
    if name not in SAMPLING_CHECKS and name != "system":
        raise BadOption(f"unknown option {word!r}", "/set alone lists them")
    raw = raw.strip()
    if not raw:
        raise BadOption(f"usage: /set {name} VALUE")
    typ = PARAM_TYPES[name]
    if typ is list and raw.lower() in CLEAR_WORDS:  # `/set stop none`: no stop strings
        return name, []
    try:
        return name, PARSERS[typ](raw)
    except ValueError:
        flag = FLAG_NAMES.get(name, name)
        raise BadOption(f"{flag} must be {typ.__name__}, got {raw!r}") from None


def screen_rows(text: str, columns: int) -> int:
    """Terminal rows that `text` and the newline after it take at this width."""
    from rich.cells import cell_len

    lines = text.removesuffix("\n").split("\n")
    return sum(max(1, math.ceil(cell_len(line) / max(columns, 1))) for line in lines)


# ---------------------------------------------------------------- not a terminal


def write_reply(reply: Reply, term: Terminal, show_thinking: bool) -> None:
    """A reply's text on stdout as it comes; its thinking, if shown, dimmed on stderr."""
    out = sys.stdout
    thought = False
    for d in reply.events():
        if d.reasoning and show_thinking:
            term.thinking(d.reasoning)
            thought = True
        if d.content:
            if thought:
                term.thinking("\n")
                thought = False
            out.write(d.content)
            out.flush()
    if thought:
        term.thinking("\n")


def answer_all(
    session: ChatSession,
    messages: Iterable[str],
    term: Terminal,
    *,
    verbose: bool,
    hide_thinking: bool = False,
) -> None:
    """One reply per message on stdout, nothing else there; notices on stderr."""
    out = sys.stdout
    for raw in messages:
        text = raw.strip()
        if not text:
            continue
        reply = session.send(text)
        note_dropped(term, reply, session.model.n_ctx)
        write_reply(reply, term, show_thinking=not hide_thinking)
        out.write("" if reply.text.endswith("\n") else "\n")
        out.flush()
        note_context_end(term, reply, session.model.n_ctx)
        if verbose and reply.stats:
            term.stats(reply.stats)
