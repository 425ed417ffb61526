"""models.toml: the shipped registry, user overrides, strict validation, alias resolution."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import pytest

from llmrun.errors import BadInput, RegistryError
from llmrun.registry import (
    ModelEntry,
    Registry,
    load_registry,
    looks_like_quant,
    shipped_path,
    split_tag,
    user_path,
)

EXPECTED_ALIASES = [
    "smollm2-135m",
    "smollm2-360m",
    "smollm2-1.7b",
    "qwen2.5-0.5b",
    "qwen2.5-1.5b",
    "qwen2.5-7b",
    "qwen3-0.6b",
    "qwen3-4b",
    "llama3.2-1b",
    "llama3.2-3b",
    "gemma3-270m",
    "gemma3-1b",
    "phi3-mini",
    "mistral-7b",
]

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def write_user(home: Path, text: str) -> Path:
    """Write LLMRUN_HOME/models.toml, as a user would."""
    home.mkdir(parents=True, exist_ok=True)
    path = user_path(home)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def load_error(home: Path, text: str) -> str:
    path = write_user(home, text)
    with pytest.raises(RegistryError) as info:
        load_registry()
    message = str(info.value)
    assert str(path) in message, message
    assert isinstance(info.value, BadInput)  # exit code 2: bad input
    return message


# ---------------------------------------------------------------- the shipped file


def test_shipped_file_is_inside_the_package_and_matches_the_top_level_one() -> None:
    path = shipped_path()
    assert path.name == "models.toml"
    assert path.is_file()
    top_level = Path(__file__).resolve().parents[1] / "models.toml"
    if top_level.exists():  # running from a checkout: the package file is a link to it
        assert path.read_bytes() == top_level.read_bytes()


def test_shipped_registry_loads_with_every_expected_model() -> None:
    reg = load_registry()
    assert reg.sources == (shipped_path(),)
    assert reg.default == "smollm2-135m"
    assert reg.default in reg.models
    for alias in EXPECTED_ALIASES:
        entry = reg.get(alias)
        assert entry is not None, alias
        assert entry.name == alias
        assert entry.repo and REPO_ID.match(entry.repo), alias
        assert entry.gguf_repo and REPO_ID.match(entry.gguf_repo), alias
        assert looks_like_quant(entry.quant) and entry.quant == entry.quant.upper()
        assert entry.revision == "main"
        assert entry.context and entry.context > 0
        assert entry.license
        assert entry.description


def test_shipped_params_follow_the_model_cards() -> None:
    reg = load_registry()
    assert dict(reg.models["qwen3-0.6b"].params) == {
        "temp": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "min_p": 0.0,
    }
    assert reg.models["gemma3-270m"].params["top_k"] == 64
    assert reg.models["smollm2-135m"].params["temp"] == 0.2
    assert reg.models["phi3-mini"].context == 4096  # never more than the trained context


def test_entries_are_read_only() -> None:
    entry = load_registry().models["smollm2-135m"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.quant = "Q8_0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        entry.params["temp"] = 2.0  # type: ignore[index]


def test_without_llmrun_home_only_the_shipped_file_is_read(
    monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    write_user(isolated_home, 'default = "qwen3-0.6b"\n')
    monkeypatch.delenv("LLMRUN_HOME")
    reg = load_registry()
    assert reg.sources == (shipped_path(),)
    assert reg.default == "smollm2-135m"


# ---------------------------------------------------------------- aliases and tags


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("smollm2-135m", ("smollm2-135m", None)),
        ("smollm2-135m:q4_k_m", ("smollm2-135m", "Q4_K_M")),
        ("qwen2.5-0.5b:Q8_0", ("qwen2.5-0.5b", "Q8_0")),
        ("Qwen/Qwen3-0.6B:q6_k", ("Qwen/Qwen3-0.6B", "Q6_K")),
        ("Qwen/Qwen3-0.6B", ("Qwen/Qwen3-0.6B", None)),
        ("smollm2-135m:", ("smollm2-135m", None)),
    ],
)
def test_split_tag(spec: str, expected: tuple[str, str | None]) -> None:
    assert split_tag(spec) == expected


@pytest.mark.parametrize(
    ("spec", "alias", "quant"),
    [
        ("smollm2-135m", "smollm2-135m", "Q4_K_M"),
        ("smollm2-135m:q8_0", "smollm2-135m", "Q8_0"),
        ("smollm2-135m:Q5_k_M", "smollm2-135m", "Q5_K_M"),
        ("qwen2.5-1.5b:IQ4_XS", "qwen2.5-1.5b", "IQ4_XS"),
        ("SmolLM2-135M:q4_0", "smollm2-135m", "Q4_0"),  # aliases are case-insensitive
    ],
)
def test_resolve(spec: str, alias: str, quant: str) -> None:
    resolved = load_registry().resolve(spec)
    assert resolved is not None
    entry, tag = resolved
    assert (entry.name, tag) == (alias, quant)


@pytest.mark.parametrize("spec", ["nope", "nope:Q4_K_M", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_resolve_unknown_alias_is_none(spec: str) -> None:
    reg = load_registry()
    assert reg.resolve(spec) is None
    assert reg.get(spec) is None


def test_close_names_suggests_the_alias_meant() -> None:
    reg = load_registry()
    assert reg.close_names("smolm2-135")[0] == "smollm2-135m"
    assert reg.close_names("qwen3-0.6:q8_0")[0] == "qwen3-0.6b"
    assert reg.close_names("completely-different-thing") == []
    assert len(reg.close_names("smollm2", n=2)) <= 2


def test_a_registry_can_be_built_directly() -> None:
    entry = ModelEntry("mine", repo="me/mine", quant="q8_0", params={"temp": 0.1})
    reg = Registry(default="mine", models={"mine": entry}, sources=())
    assert reg.resolve("mine") == (entry, "Q8_0")
    with pytest.raises(TypeError):
        entry.params["temp"] = 1.0  # type: ignore[index]


# ---------------------------------------------------------------- the user file


def test_user_file_overrides_field_by_field_and_merges_params(isolated_home: Path) -> None:
    path = write_user(
        isolated_home,
        """
        default = "mine"

        [models.smollm2-135m]
        quant = "q8_0"
        [models.smollm2-135m.params]
        top_k = 10
        stop = ["END"]

        [models.mine]
        gguf_repo = "me/Mine-GGUF"
        description = "my own model"
        """,
    )
    reg = load_registry()
    assert reg.sources == (shipped_path(), path)
    assert reg.default == "mine"

    smol = reg.models["smollm2-135m"]
    assert smol.quant == "Q8_0"
    assert smol.repo == "HuggingFaceTB/SmolLM2-135M-Instruct"  # kept from the shipped entry
    assert smol.context == 8192
    assert dict(smol.params) == {"temp": 0.2, "top_p": 0.9, "top_k": 10, "stop": ("END",)}
    assert reg.resolve("smollm2-135m") == (smol, "Q8_0")

    mine = reg.models["mine"]
    assert (mine.repo, mine.gguf_repo, mine.quant) == (None, "me/Mine-GGUF", "Q4_K_M")
    assert list(reg.models)[: len(EXPECTED_ALIASES)] == EXPECTED_ALIASES  # shipped order first


def test_explicit_home_is_read_instead_of_the_environment(
    tmp_path: Path, isolated_home: Path
) -> None:
    write_user(isolated_home, 'default = "qwen3-4b"\n')
    other = tmp_path / "other-home"
    write_user(other, 'default = "gemma3-1b"\n')
    assert load_registry(other).default == "gemma3-1b"
    assert load_registry().default == "qwen3-4b"
    assert load_registry(tmp_path / "empty").default == "smollm2-135m"


def test_quoted_aliases_with_dots(isolated_home: Path) -> None:
    write_user(
        isolated_home,
        """
        [models."qwen2.5-0.5b"]
        context = 4096
        [models."my.model"]
        repo = "me/my.model"
        """,
    )
    reg = load_registry()
    assert reg.models["qwen2.5-0.5b"].context == 4096
    assert reg.models["qwen2.5-0.5b"].params["top_k"] == 20
    assert reg.resolve("my.model:q8_0") == (reg.models["my.model"], "Q8_0")


# ---------------------------------------------------------------- errors


def test_unknown_key_names_file_key_and_line(isolated_home: Path) -> None:
    message = load_error(
        isolated_home,
        """
        [models.smollm2-135m]
        context = 4096
        qaunt = "Q8_0"
        """,
    )
    assert "line 3" in message
    assert "models.smollm2-135m.qaunt" in message
    assert "known:" in message and "quant" in message


def test_unknown_top_level_key(isolated_home: Path) -> None:
    message = load_error(isolated_home, 'defualt = "smollm2-135m"\n')
    assert "line 1" in message and "'defualt'" in message


def test_bad_param_names_the_key(isolated_home: Path) -> None:
    message = load_error(
        isolated_home,
        """
        [models."qwen2.5-0.5b"]
        quant = "Q8_0"

        [models."qwen2.5-0.5b".params]
        temp = -1
        """,
    )
    assert 'models."qwen2.5-0.5b".params.temp' in message
    assert "line 5" in message
    assert ">= 0" in message and "-1" in message


def test_unknown_param_names_the_key(isolated_home: Path) -> None:
    message = load_error(
        isolated_home,
        """
        [models.smollm2-135m.params]
        temperature = 0.5
        """,
    )
    assert "models.smollm2-135m.params.temperature" in message and "line 2" in message
    assert "temp" in message.split("known:")[1]


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ("[models.x]\nrepo = 'a/b'\ncontext = '8k'", "models.x.context", "positive integer"),
        ("[models.x]\nrepo = 'a/b'\ncontext = 0", "models.x.context", "positive integer"),
        ("[models.x]\nrepo = 'a/b'\ncontext = true", "models.x.context", "positive integer"),
        ("[models.x]\nrepo = 'noslash'", "models.x.repo", "org/name"),
        ("[models.x]\nrepo = 5", "models.x.repo", "org/name"),
        ("[models.x]\ngguf_repo = 'a/b/c'", "models.x.gguf_repo", "org/name"),
        ("[models.x]\nrepo = 'a/b'\nquant = 'Q4KM'", "models.x.quant", "quant type"),
        ("[models.x]\nrepo = 'a/b'\nquant = 4", "models.x.quant", "quant type"),
        ("[models.x]\nrepo = 'a/b'\nrevision = ''", "models.x.revision", "branch"),
        ("[models.x]\nrepo = 'a/b'\ndescription = 3", "models.x.description", "string"),
        ("[models.x]\nrepo = 'a/b'\nparams = 3", "models.x.params", "table"),
        ("[models.x]\nrepo = 'a/b'\nparams = { top_k = 1.5 }", "models.x.params.top_k", "int"),
        ("[models.x]\nrepo = 'a/b'\nparams = { temp = 'hot' }", "models.x.params.temp", "float"),
        ("[models.x]\nrepo = 'a/b'\nparams = { stop = [1] }", "models.x.params.stop", "list"),
        ("[models.x]\nrepo = 'a/b'\nparams = { seed = true }", "models.x.params.seed", "int"),
        ("[models]\nx = 'a/b'", "models.x", "table"),
        ("models = 1", "models", "table"),
        ("default = 3", "default", "model name"),
        ("[models.Mine]\nrepo = 'a/b'", "models.Mine", "lower-case"),
        ("[models.x]\ndescription = 'no source'", "models.x", "repo or gguf_repo"),
    ],
)
def test_bad_values(isolated_home: Path, body: str, key: str, words: str) -> None:
    message = load_error(isolated_home, body + "\n")
    assert key in message, message
    assert words in message, message
    assert re.search(r"models\.toml: line \d+: ", message), message


def test_toml_syntax_error_names_the_file_and_position(isolated_home: Path) -> None:
    message = load_error(isolated_home, "[models.x\nrepo = 'a/b'\n")
    assert "invalid TOML" in message
    assert "line 1" in message


def test_default_must_name_a_model(isolated_home: Path) -> None:
    message = load_error(
        isolated_home,
        """
        # my defaults
        default = "nope"
        """,
    )
    assert "default" in message and "'nope'" in message and "line 2" in message
    assert "smollm2-135m" in message  # the remedy lists what exists


def test_default_typo_gets_a_suggestion(isolated_home: Path) -> None:
    message = load_error(isolated_home, 'default = "qwen3-06b"\n')
    assert "did you mean 'qwen3-0.6b'?" in message
