"""What a Hugging Face repo holds, and which of its files a pull fetches.

Pure functions over file names and the Hub's listing; no network, no disk. A
GGUF repo gives the file(s) of one quant; a safetensors checkpoint gives what
converting it needs; anything else is an error that says what the repo holds.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from llmrun.errors import BadInput, HubError

DEFAULT_QUANT = "Q4_K_M"

# A Hub repo id, "org/name" of letters, digits, '-', '_', '.': the one pattern llmrun uses.
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

# What converting a checkpoint needs, at the top of the repo; never *.bin/*.pth/*.onnx.
CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template*",
)
# GGUF files that ride along in model repos but are not a language model.
NOT_A_MODEL = ("mmproj*",)

SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)  # llama.cpp's split parts
_TOKEN_SPLIT = re.compile(r"[-./]")
# A token of a GGUF file name that names its quant: wider than the quants llmrun makes
# (registry.looks_like_quant), to list what repos hold, e.g. Q4_0_4_4.
_QUANT_TOKEN = re.compile(r"^(?:I?Q|TQ)\d(?:_[A-Z0-9]+)*$|^(?:BF16|F16|F32|MXFP4)$", re.IGNORECASE)


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path in the repo, "/"-separated
    size: int | None
    sha256: str | None = None  # LFS files
    git_oid: str | None = None  # the git blob id: the Hub's ETag for files not in LFS

    @property
    def etag(self) -> str | None:
        """The name of its blob in the Hugging Face cache."""
        return self.sha256 or self.git_oid


@dataclass(frozen=True)
class Listing:
    repo: str
    revision: str  # as asked: branch, tag or commit
    commit: str  # what it resolved to
    files: tuple[RemoteFile, ...]
    cached: bool = False  # read from the local cache, not the Hub


@dataclass(frozen=True)
class Selection:
    kind: str  # "gguf" or "safetensors"
    quant: str | None
    files: tuple[RemoteFile, ...]
    projector: RemoteFile | None = None  # a vision model's mmproj-*.gguf, fetched with it


class NoSuchQuant(BadInput):
    """The repo has GGUF files, but none of the quant asked for."""


# The projector quants a pull takes when --mmproj-quant does not say, best first: the
# projector is small, and quantizing it costs more accuracy than it saves memory.
PROJECTOR_QUANTS = ("F16", "BF16", "F32", "Q8_0")


def select(listing: Listing, quant: str | None, projector_quant: str | None = None) -> Selection:
    """The files to fetch: one GGUF quant (all its split parts) and the repo's image projector
    beside it if it has one, or a checkpoint's files."""
    selection = _select_model(listing, quant)
    if selection.kind != "gguf":
        return selection
    found = select_projector(listing, selection.files[0].name, projector_quant)
    return Selection(selection.kind, selection.quant, selection.files, found)


def select_projector(
    listing: Listing, model_file: str, quant: str | None = None
) -> RemoteFile | None:
    """The mmproj-*.gguf in the model file's folder, of `quant` (default: PROJECTOR_QUANTS
    in order); None when the repo has none. NoSuchQuant when `quant` is not there."""
    folder = PurePosixPath(model_file).parent
    found = [
        f
        for f in listing.files
        if PurePosixPath(f.name).parent == folder
        and fnmatch.fnmatch(PurePosixPath(f.name).name.lower(), "mmproj*.gguf")
    ]
    if not found:
        return None
    for want in (quant.upper(),) if quant else PROJECTOR_QUANTS:
        hits = sorted((f for f in found if has_quant(f.name, want)), key=lambda f: f.name)
        if hits:
            return hits[0]
    if quant is None:
        return sorted(found, key=lambda f: f.name)[0]  # an unnamed quant: the one there is
    available = ", ".join(sorted({q for f in found if (q := quant_in(f.name))}))
    raise NoSuchQuant(
        f"{_where(listing)}{listing.repo} has no {quant.upper()} projector (mmproj)",
        f"available: {available or _names(found)}",
    )


def _select_model(listing: Listing, quant: str | None) -> Selection:
    ggufs = [
        f
        for f in listing.files
        if f.name.lower().endswith(".gguf")
        and not any(fnmatch.fnmatch(PurePosixPath(f.name).name.lower(), p) for p in NOT_A_MODEL)
    ]
    if ggufs:
        return _select_gguf(listing, ggufs, quant)
    wanted = [f for f in listing.files if _for_conversion(f.name)]
    if any(f.name.endswith(".safetensors") for f in wanted):
        return Selection("safetensors", None, tuple(wanted))
    raise BadInput(
        f"{_where(listing)}{listing.repo} holds no GGUF or safetensors files",
        f"it has {_summary(listing.files)}",
    )


def _select_gguf(listing: Listing, ggufs: list[RemoteFile], quant: str | None) -> Selection:
    groups: dict[str, list[RemoteFile]] = {}  # split parts share a key
    for f in ggufs:
        groups.setdefault(SPLIT_RE.sub(".gguf", f.name), []).append(f)
    available = ", ".join(sorted({q for key in groups if (q := quant_in(key))})) or _names(ggufs)
    if quant is None:
        if len(groups) == 1:
            [(key, files)] = groups.items()
            return _gguf_group(listing, key, files, quant_in(key))
        quant = DEFAULT_QUANT
        if not any(has_quant(key, quant) for key in groups):
            raise BadInput(
                f"{listing.repo} has several GGUF files; choose one with {listing.repo}:QUANT",
                f"available: {available}",
            )
    hits = sorted((key for key in groups if has_quant(key, quant)), key=lambda k: (len(k), k))
    if not hits:
        raise NoSuchQuant(
            f"{_where(listing)}{listing.repo} has no {quant} GGUF", f"available: {available}"
        )
    return _gguf_group(listing, hits[0], groups[hits[0]], quant)


def _gguf_group(
    listing: Listing, key: str, files: list[RemoteFile], quant: str | None
) -> Selection:
    files = sorted(files, key=lambda f: f.name)
    split = SPLIT_RE.search(files[0].name)
    if split and len(files) != int(split.group(2)):
        raise HubError(
            f"{listing.repo}: {key} is split in {int(split.group(2))} parts "
            f"but {len(files)} are {'cached' if listing.cached else 'listed'}"
        )
    return Selection("gguf", quant.upper() if quant else None, tuple(files))


def quant_in(name: str) -> str | None:
    """The quant a GGUF file name states, e.g. Q4_K_M in `Model-Q4_K_M.gguf`; None if none."""
    stem = SPLIT_RE.sub("", name)
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    tokens = [t.upper() for t in _TOKEN_SPLIT.split(stem) if _QUANT_TOKEN.match(t)]
    return tokens[-1] if tokens else None


def has_quant(name: str, quant: str) -> bool:
    """The quant is a whole token of the name: Q4_0 is not in Q4_0_4_4, nor Q4_K in Q4_K_M."""
    pattern = rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])"
    return re.search(pattern, name, re.IGNORECASE) is not None


def check_safe(repo: str, name: str) -> None:
    """Refuse a repo file name that would land outside the download folder."""
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or re.match(r"^[A-Za-z]:", name)
        or any(p in ("", ".", "..") for p in name.split("/"))
    ):
        raise HubError(
            f"refusing {repo}: its file name {name!r} would land outside the download folder"
        )


def _for_conversion(name: str) -> bool:
    return "/" not in name and any(fnmatch.fnmatch(name, p) for p in CHECKPOINT_FILES)


def _where(listing: Listing) -> str:
    return "the cached copy of " if listing.cached else ""


def _names(files: Sequence[RemoteFile]) -> str:
    return ", ".join(f.name for f in files[:8]) + (", ..." if len(files) > 8 else "")


def _summary(files: Sequence[RemoteFile]) -> str:
    """`3 .bin, 2 .json, README`: what a repo holds, briefly."""
    if not files:
        return "no files"
    kinds = Counter(PurePosixPath(f.name).suffix.lower() or f.name for f in files)
    return ", ".join(f"{n} {k}" if n > 1 else k for k, n in kinds.most_common(8))
