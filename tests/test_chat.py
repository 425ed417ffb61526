"""`llmrun chat`: the conversation library on the real engine, and the REPL in a real terminal.

The REPL tests type into a pseudo-terminal (pexpect) as a person would. Replies are greedy and
short (`--temp 0 -n 40`) to keep the suite fast on two cores.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from llmrun.chat import ChatSession, chat_path
from llmrun.engine import Model, load_model
from llmrun.errors import BadInput, ContextOverflow
from llmrun.options import Load, Sampling

GREEDY = Sampling(temp=0.0, max_tokens=40)
PROMPT = ">>> "
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MARKUP = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
QUESTIONS = [
    "What is the capital of France?",
    "And of Germany?",
    "Tell me a joke.",
    "Name a colour.",
    "What is 2+2?",
    "Thanks!",
]


@pytest.fixture(scope="module")
def engine(smollm2: Path) -> Iterator[Model]:
    with load_model(smollm2, Load(ctx_size=2048)) as model:
        yield model


@pytest.fixture
def session(engine: Model) -> ChatSession:
    engine.reset()
    return ChatSession(engine, GREEDY)


def say(session: ChatSession, text: str) -> str:
    return "".join(session.send(text))


# ---------------------------------------------------------------- the library: KV reuse


def test_each_turn_evaluates_only_its_new_tokens(session: ChatSession, engine: Model) -> None:
    """Turn N+1 evaluates the new user turn and the template's few tokens, nothing before it."""
    prompt_text, prompt_len, last_gen, last_reason = "", 0, 0, ""
    for turn, question in enumerate(QUESTIONS):
        reply = session.send(question)
        answer = "".join(reply)
        st = reply.stats
        assert st is not None and answer
        if turn:
            previous = session.messages[-3]
            # What is new: the text after the previous prompt and reply, through this prompt.
            text = session.template.render(session._window(session.start)[:-1])
            suffix = text[len(prompt_text) + len(previous["content"]) :]
            new = len(engine.tokenize(suffix, add_special=False, parse_special=True))
            # A reply cut by -n ends in a token that was sampled but not evaluated yet.
            unevaluated = 1 if last_reason == "length" else 0
            assert st.prompt_tokens == new + unevaluated, (turn, st)
            assert st.reused_tokens == prompt_len + last_gen - unevaluated, (turn, st)
            # "The template's few": ChatML adds about ten tokens around the message.
            assert st.prompt_tokens <= len(engine.tokenize(question, add_special=False)) + 12
        prompt_text = session.template.render(session._window(session.start)[:-1])
        prompt_len = st.prompt_tokens + st.reused_tokens
        last_gen, last_reason = st.gen_tokens, st.stop_reason


def test_retry_reuses_the_whole_prompt_and_repeats_at_temp_0(session: ChatSession) -> None:
    first = say(session, QUESTIONS[0])
    reply = session.retry()
    assert "".join(reply) == first
    assert reply.stats is not None and reply.stats.prompt_tokens == 1  # only the last token
    assert [m["role"] for m in session.messages] == ["user", "assistant"]


def test_an_interrupted_reply_stays_marked_and_the_chat_goes_on(session: ChatSession) -> None:
    reply = session.send("Write a very long story about a dragon.")
    pieces = [next(iter(reply)) for _ in range(3)]
    reply.close()  # what Ctrl-C does
    assert session.messages[-1] == {
        "role": "assistant",
        "content": "".join(pieces),
        "interrupted": True,
    }
    nxt = session.send("Thanks!")
    assert "".join(nxt) and not nxt.interrupted
    assert nxt.stats is not None and nxt.stats.reused_tokens > 20  # the prefix survived Ctrl-C
    assert "interrupted" not in session.messages[-1]


def test_save_and_load_restore_exactly(session: ChatSession, engine: Model) -> None:
    session.set("system", "You are terse.")
    session.set("temp", 0.5)
    session.set("stop", ["###"])
    session.set("max_tokens", 8)
    for q in QUESTIONS[:2]:
        say(session, q)
    path = session.save("trip")
    assert path == chat_path("trip") and path.is_file()
    other = ChatSession(engine)
    other.load("trip")
    assert other.messages == session.messages
    assert other.system == "You are terse." and other.sampling == session.sampling
    assert other.start == session.start
    assert json.loads(path.read_text())["messages"] == session.messages


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"format": 1, "messages": [{"role": "robot", "content": "hi"}]}',
        '{"format": 1, "messages": [], "options": {"temp": -1}}',
        '{"format": 1, "messages": [], "options": {"mirostat": 2}}',
        '{"format": 99, "messages": []}',
    ],
    ids=["not-json", "bad-role", "bad-value", "unknown-option", "format"],
)
def test_load_refuses_a_bad_file(session: ChatSession, content: str) -> None:
    path = chat_path("bad")
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(BadInput):
        session.load("bad")
    assert session.messages == []


def test_load_of_a_missing_chat_lists_the_saved_ones(session: ChatSession) -> None:
    session.save("kept")
    with pytest.raises(BadInput, match="saved: kept"):
        session.load("nope")


def test_a_long_conversation_drops_its_oldest_turns(smollm2: Path) -> None:
    with load_model(smollm2, Load(ctx_size=256)) as small:
        chat = ChatSession(small, Sampling(temp=0.0, max_tokens=24), "You are terse.")
        dropped = 0
        for i in range(10):
            reply = chat.send(f"Question {i}: name an animal.")
            assert "".join(reply)
            dropped += reply.dropped
            window = chat._window(chat.start)
            assert window[0] == {"role": "system", "content": "You are terse."}
            assert window[1]["role"] == "user"
        assert dropped > 0 and chat.start > 0
        assert len(chat.messages) == 20  # dropped from the window, not from the conversation
        assert chat.context_used() < small.n_ctx


def test_a_reply_that_fills_the_context_ends_and_the_chat_goes_on(smollm2: Path) -> None:
    with load_model(smollm2, Load(ctx_size=256)) as small:
        chat = ChatSession(small, Sampling(temp=0.0, max_tokens=-1))
        reply = chat.send("Write a very long story about a dragon.")
        assert "".join(reply).startswith("Once upon a time")
        assert reply.stop_reason == "context" and not reply.interrupted
        chat.set("max_tokens", 8)
        nxt = chat.send("Thanks!")
        assert "".join(nxt) and nxt.dropped == 1


def test_a_message_longer_than_the_context_is_refused(smollm2: Path) -> None:
    with load_model(smollm2, Load(ctx_size=64)) as tiny:
        chat = ChatSession(tiny, GREEDY)
        with pytest.raises(ContextOverflow):
            chat.send("word " * 400)
        assert chat.messages == []


# ---------------------------------------------------------------- the REPL, in a terminal


def spawn(smollm2: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "llmrun", "chat", str(smollm2), "--temp", "0", "-n", "40", *args],
        env=dict(os.environ),  # LLMRUN_HOME and NO_COLOR from the autouse fixture
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 200),
    )
    child.expect_exact(PROMPT)
    return child


def clean(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


def typed(child: pexpect.spawn, line: str) -> str:
    """Type a line and Enter; what the terminal showed until the next prompt, minus the echo."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    echo, _, rest = clean(child.before).partition("\n")
    assert echo.endswith(line.splitlines()[-1] if line else "")
    return rest.rstrip("\n")


def show(child: pexpect.spawn) -> dict[str, str]:
    fields = {}
    for line in typed(child, "/show").splitlines():
        key, _, value = line.strip().partition(" ")
        fields[key] = value.strip()
    return fields


def leave(child: pexpect.spawn) -> int:
    child.sendeof()  # Ctrl-D
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_two_turns_then_clear(smollm2: Path) -> None:
    child = spawn(smollm2)
    first = typed(child, "What is the capital of France?")
    second = typed(child, "And of Germany?")
    assert first and second
    assert not any(m in first + second for m in MARKUP)
    assert show(child)["turns"] == "2"
    assert "new conversation" in typed(child, "/clear")
    assert show(child)["turns"] == "0"
    # A cleared chat answers like a new one.
    assert typed(child, "What is the capital of France?") == first
    assert leave(child) == 0


def test_set_temp_0_then_retry_repeats_the_reply(smollm2: Path) -> None:
    child = spawn(smollm2, "--temp", "1.5")
    typed(child, "Tell me a joke.")
    assert "temp = 0.0" in typed(child, "/set temp 0")
    again = typed(child, "/retry")
    assert again and typed(child, "/retry") == again
    assert show(child)["turns"] == "1"
    stats = typed(child, "/stats")
    assert "first token after" in stats and "tokens/s" in stats
    assert re.search(r"prompt 1 tokens evaluated", stats)  # retry re-evaluates nothing
    assert leave(child) == 0


def test_save_then_load_in_a_new_process(smollm2: Path) -> None:
    child = spawn(smollm2, "--system", "You are terse.")
    typed(child, "What is the capital of France?")
    typed(child, "And of Germany?")
    assert "saved 4 messages" in typed(child, "/save trip")
    before = show(child)
    assert leave(child) == 0
    saved = json.loads(chat_path("trip").read_text())

    child = spawn(smollm2)  # no --system: the file brings it back
    assert "trip" in typed(child, "/load")  # alone: lists them
    assert "loaded 4 messages" in typed(child, "/load trip")
    after = show(child)
    assert after["turns"] == before["turns"] == "2"
    assert after["system"] == "You are terse."
    typed(child, "/save again")
    assert json.loads(chat_path("again").read_text())["messages"] == saved["messages"]
    # The next reply sees the whole restored conversation.
    assert typed(child, "Thanks!")
    evaluated = int(re.search(r"prompt (\d+) tokens", typed(child, "/stats")).group(1))
    assert evaluated > int(after["context"].split()[0])
    assert leave(child) == 0


def test_ctrl_c_stops_a_reply_and_keeps_the_session(smollm2: Path) -> None:
    child = spawn(smollm2, "-n", "2000")
    child.sendline("Write a very long story about a dragon.")
    child.expect_exact("Once upon a time")
    child.sendintr()
    child.expect_exact("[interrupted]")
    child.expect_exact(PROMPT)
    typed(child, "/set max_tokens 40")
    assert typed(child, "Thanks!")
    typed(child, "/save cut")
    first_reply = json.loads(chat_path("cut").read_text())["messages"][1]
    assert first_reply["interrupted"] is True
    assert first_reply["content"].startswith("Once upon a time")
    assert leave(child) == 0


def test_ctrl_c_clears_a_typed_line(smollm2: Path) -> None:
    child = spawn(smollm2)
    child.send("half a thought")
    child.expect_exact("thought")
    child.sendintr()
    child.expect_exact(PROMPT)  # still running, on a fresh line
    assert "Use Ctrl-D" not in clean(child.before)
    assert show(child)["turns"] == "0"
    assert leave(child) == 0


def test_ctrl_c_at_an_empty_prompt_says_how_to_leave_and_stays(smollm2: Path) -> None:
    # As python's, bash's and Ollama's prompts do: only Ctrl-D or /bye end the chat.
    child = spawn(smollm2, "-n", "8", "--temp", "0")
    child.sendintr()
    child.expect_exact("Use Ctrl-D or /bye to exit")
    child.expect_exact(PROMPT)
    child.sendintr()  # twice: still here
    child.expect_exact("Use Ctrl-D or /bye to exit")
    child.expect_exact(PROMPT)
    assert typed(child, "What is the capital of France?")
    assert show(child)["turns"] == "1"
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_multi_line_input_block_and_paste(smollm2: Path) -> None:
    child = spawn(smollm2)
    child.sendline('"""')
    child.expect_exact("... ")
    child.sendline("first line")
    child.expect_exact("... ")
    typed(child, 'second line"""')
    # A bracketed paste of several lines is one message.
    child.send("\x1b[200~pasted one\npasted two\x1b[201~")
    typed(child, "")
    typed(child, "/save lines")
    messages = json.loads(chat_path("lines").read_text())["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "first line\nsecond line",
        "pasted one\npasted two",
    ]
    assert leave(child) == 0


def test_unknown_command_and_bad_values_get_one_line(smollm2: Path) -> None:
    child = spawn(smollm2)
    assert typed(child, "/frobnicate").count("\n") == 0
    assert "/help" in typed(child, "/frobnicate")
    assert "error" in typed(child, "/set temp hot")
    assert "error" in typed(child, "/set mirostat 2")
    assert "error" in typed(child, "/load ../etc")
    helped = typed(child, "/help")
    assert all(name in helped for name in ("/retry", "/save", "/stats", '"""', "Ctrl-C"))
    assert show(child)["turns"] == "0"
    assert leave(child) == 0


def test_markdown_redraws_the_finished_reply(smollm2: Path) -> None:
    child = spawn(smollm2, "--markdown")
    child.sendline("List three fruits.")
    child.expect_exact(PROMPT)
    raw = child.before
    assert re.search(r"\x1b\[\d+F\x1b\[J", raw)  # back to the reply's first line, erased
    assert leave(child) == 0


@pytest.mark.parametrize(
    ("typed_", "expected"),
    [
        ("temp 0.7", ("temp", 0.7)),
        ("--top-k 20", ("top_k", 20)),
        ("n 64", ("max_tokens", 64)),
        ("stop '###' END", ("stop", ["###", "END"])),
        ("stop none", ("stop", [])),
        ("--stop ''", ("stop", [])),
    ],
)
def test_set_takes_names_and_flag_spellings(typed_: str, expected: tuple) -> None:
    from llmrun.chat.repl import parse_setting

    assert parse_setting(typed_) == expected


def test_screen_rows_counts_wrapped_lines() -> None:
    from llmrun.chat.repl import screen_rows

    assert screen_rows("short", 80) == 1
    assert screen_rows("a" * 80, 80) == 1
    assert screen_rows("a" * 81 + "\n\nb\n", 80) == 4


def test_history_survives_sessions(smollm2: Path, isolated_home: Path) -> None:
    child = spawn(smollm2)
    typed(child, "/show")
    assert leave(child) == 0
    assert "/show" in (isolated_home / "chat_history").read_text()
    child = spawn(smollm2)
    child.send("\x1b[A")  # Up: the line from the last session
    child.expect_exact("/show")
    child.sendline("")
    child.expect_exact("context")
    child.expect_exact(PROMPT)
    assert leave(child) == 0


# ---------------------------------------------------------------- not a terminal


def test_piped_lines_get_one_reply_each_and_nothing_else(
    llmrun, smollm2: Path, session: ChatSession
) -> None:
    expected = [say(session, q) for q in QUESTIONS[:2]]
    stdin = "\n".join(QUESTIONS[:2]) + "\n"
    args = ("--temp", "0", "-n", "40", "-c", "2048")
    r = llmrun("chat", str(smollm2), *args, input=stdin)
    assert r.code == 0, r.stderr
    assert r.stdout == "".join(e if e.endswith("\n") else e + "\n" for e in expected)
    assert r.stderr == ""


def test_batch_reads_all_of_stdin_as_one_message(llmrun, smollm2: Path) -> None:
    r = llmrun("chat", str(smollm2), "--batch", "--temp", "0", "-n", "8", input="Hi\nthere\n")
    assert r.code == 0, r.stderr
    assert r.stdout.count("\n") >= 1 and r.stdout.strip()
    r = llmrun("chat", str(smollm2), "--batch", input="")
    assert r.code == 2 and "no message" in r.stderr


def test_ten_turns_in_a_small_context(llmrun, smollm2: Path) -> None:
    stdin = "".join(f"Question {i}: name an animal.\n" for i in range(10))
    r = llmrun("chat", str(smollm2), "-c", "256", "--temp", "0", "-n", "40", input=stdin)
    assert r.code == 0, r.stderr
    assert "dropped the" in r.stderr and "oldest turn" in r.stderr
    assert "error" not in r.stderr


# ---------------------------------------------------------------- thinking models


def test_thinking_is_shown_apart_and_not_kept_as_the_answer(
    engine: Model, tmp_path: Path, llmrun
) -> None:
    from llmrun.templates.render import ChatTemplate
    from tests.test_run_tools import THINKING_TEMPLATE

    path = tmp_path / "thinking.jinja"
    path.write_text(THINKING_TEMPLATE)
    engine.reset()
    chat = ChatSession(
        engine, Sampling(temp=0.0, max_tokens=12), template=ChatTemplate(engine, path)
    )
    assert chat.thinking  # the template opens <think>: auto splits it off
    reply = chat.send("Why is the sky blue?")
    events = list(reply.events())
    # The tiny model never closes the block: all it writes is thinking, none of it the answer.
    assert reply.reasoning and all(not e.content for e in events)
    assert chat.messages[-1]["content"] == ""
    assert "interrupted" not in chat.messages[-1]

    r = llmrun("chat", str(engine.path), "--chat-template", str(path), "-n", "12", "--temp", "0",
               input="Why is the sky blue?\n")  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.stdout.strip() == ""
    assert reply.reasoning.strip()[:20] in r.stderr  # shown, on stderr
    hidden = llmrun("chat", str(engine.path), "--chat-template", str(path), "-n", "12",
                    "--temp", "0", "--hide-thinking", input="Why is the sky blue?\n")  # fmt: skip
    assert reply.reasoning.strip()[:20] not in hidden.stderr
