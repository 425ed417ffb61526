"""MODEL|DIR|FILE.gguf, as given to `llmrun quantize`, to something we can convert.

In order: a path (a checkpoint folder, its config.json, or a GGUF file to
requantize); a checkpoint `llmrun pull` stored (its manifest in the store); an
alias or Hugging Face id whose checkpoint is in the Hugging Face cache; a GGUF
in the store (requantized; first, when MODEL names a quant). Nothing is downloaded here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llmrun import store
from llmrun.errors import BadModelFile, ModelNotFound
from llmrun.registry import load_registry, split_tag
from llmrun.repofiles import CHECKPOINT_FILES, REPO_ID
from llmrun.store import store_name

_QUANT_SUFFIX = re.compile(r"[-.](F32|F16|BF16|Q\d\w*|IQ\d\w*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    kind: str  # "checkpoint" (a folder) or "gguf" (a file to requantize)
    path: Path
    name: str  # the store name of the output
    repo: str | None = None
    revision: str | None = None


def find_source(spec: str) -> Source:
    spec = spec.strip()
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        if path.name == "config.json":
            return _folder(path.parent)
        return Source("gguf", path, store_name(_QUANT_SUFFIX.sub("", path.stem)))
    if spec.lower().endswith(".gguf") or spec.startswith((".", "/", "~")):
        raise BadModelFile(f"no such file or folder: {spec}")

    name, tag = split_tag(spec)
    stored = _stored_gguf(spec) if tag else None  # name:QUANT names a GGUF file
    if stored is not None:
        return stored
    registry = load_registry(store.home())
    # An alias, or a repo an alias lists: `llmrun pull` stores both under the alias's name.
    entry = registry.get(name) or next(
        (e for e in registry.models.values() if (e.repo or "").lower() == name.lower()), None
    )
    pulled = _pulled_checkpoint(entry.name if entry else name)
    if pulled is not None:
        return pulled
    repo = entry.repo if entry else (name if REPO_ID.match(name) else None)
    if repo:
        folder = _cached(repo, entry.revision if entry else None)
        if folder is not None:
            out = entry.name if entry else store_name(repo.split("/")[1])
            return Source("checkpoint", folder, out, repo, folder.name)
    stored = _stored_gguf(spec)
    if stored is not None:
        return stored
    raise ModelNotFound(
        f"{spec} is not here: no checkpoint folder, GGUF file, or pulled checkpoint by that name",
        f"run `llmrun pull {name}` first, or give a folder with config.json and *.safetensors",
    )


def _folder(folder: Path) -> Source:
    # A snapshot of the Hugging Face cache: models--org--name/snapshots/<commit>
    parent = folder.resolve().parent
    if parent.name == "snapshots" and parent.parent.name.startswith("models--"):
        repo = parent.parent.name.removeprefix("models--").replace("--", "/", 1)
        return Source("checkpoint", folder, store_name(repo.split("/")[-1]), repo, folder.name)
    return Source("checkpoint", folder, store_name(folder.resolve().name))


def _pulled_checkpoint(name: str) -> Source | None:
    """A checkpoint `llmrun pull` recorded under `name` (an alias or a repo's store name)."""
    candidates = [name]
    if REPO_ID.match(name):
        candidates.append(store_name(name.split("/")[1]))
    for candidate in candidates:
        data = store.read_checkpoint(store_name(candidate))
        if data is None:
            continue
        folder = Path(str(data.get("path", "")))
        if (folder / "config.json").is_file():
            name = data.get("name") or candidate
            return Source("checkpoint", folder, name, data.get("repo"), data.get("revision"))
    return None


def _cached(repo: str, revision: str | None) -> Path | None:
    """The repo's checkpoint in the Hugging Face cache, or None when it is not there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(
            snapshot_download(
                repo,
                revision=revision,
                allow_patterns=list(CHECKPOINT_FILES),
                local_files_only=True,
            )
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if (folder / "config.json").is_file() else None


def _stored_gguf(spec: str) -> Source | None:
    from llmrun.resolve import resolve_model

    try:
        found = resolve_model(spec)
    except (ModelNotFound, BadModelFile):
        return None
    if found.origin not in ("store", "demo"):
        return None
    return Source("gguf", found.path, store_name(found.name))
