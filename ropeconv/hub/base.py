"""A base given as a Hub id: `ORG/NAME`, `ORG/NAME@REVISION`, `ORG/NAME:FILE.gguf` (a GGUF file in the repo), or
`ORG/NAME@REVISION:FILE.gguf`, fetched into huggingface_hub's cache by its own `snapshot_download` /
`hf_hub_download` — which honour HF_TOKEN, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE themselves — and read from
the snapshot folder like any local base.

The rule (extend.options.build_job applies it, for the CLI and recipes alike): a path that exists is local; else a
text of the Hub id form is fetched; else it is a base not found. Only the files a run reads are fetched: config,
generation config, the safetensors weights (the shards the index names, never a stray consolidated.safetensors),
tokenizer files and README.md (the card's metadata); pickle weights only with --allow-pickle, and only when the
repo has no safetensors. Every failure is one line (an InputError): gated repo, no such repo, no such revision,
no such file, or not in the cache while the Hub cannot be reached (offline), naming what is missing.

huggingface_hub is imported only when a Hub id is fetched: `extend --help` and `recipe check` never load it.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ropeconv.errors import InputError
from ropeconv.formats import is_gguf

DEFAULT_REVISION = "main"  # huggingface_hub's constants.DEFAULT_REVISION
# ORG/NAME as the Hub spells repo ids (huggingface_hub.utils.validate_repo_id: letters, digits, - _ . ; no "--"
# or ".."), then @REVISION (a branch, tag or commit; refs/pr/N has slashes, never a colon), then :FILE.gguf
_REF = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^:@\s]+))?(?::(?P<file>\S+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")

# The files of a HF model repo a run reads (checkpoint.hf.AUX_FILES, the weights, the config; README.md for the
# card's license and language). Exact names: huggingface_hub matches patterns with fnmatch, where * crosses "/".
CONFIG_FILES = ("config.json", "generation_config.json", "README.md")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")  # --allow-pickle, no safetensors


@dataclass(frozen=True)
class HubRef:
    """A base written as a Hub id (not yet fetched)."""

    repo_id: str
    revision: str | None  # as written; None: the default branch
    filename: str | None  # ORG/NAME:FILE.gguf

    @property
    def text(self) -> str:
        """As a user writes it (what --save-recipe saves)."""
        return (self.repo_id + (f"@{self.revision}" if self.revision else "")
                + (f":{self.filename}" if self.filename else ""))

    @property
    def stand_in(self) -> Path:
        """The path the checks that need no base see (is it a GGUF?) before, or instead of, fetching."""
        return Path(self.filename or self.repo_id)


@dataclass(frozen=True)
class HubBase:
    """A fetched base: what was asked and the commit it resolved to (the manifest's base.hub)."""

    repo_id: str
    revision: str  # as asked ("main" when none was)
    commit: str
    filename: str | None = None

    @property
    def text(self) -> str:
        return HubRef(self.repo_id, None if self.revision == DEFAULT_REVISION else self.revision, self.filename).text

    def to_json(self) -> dict[str, Any]:
        record = {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit}
        if self.filename:
            record["file"] = self.filename
        return record


@dataclass(frozen=True)
class Snapshot:
    """A folder (or a file in one) of huggingface_hub's cache: …/models--ORG--NAME/snapshots/COMMIT[/FILE]."""

    repo_id: str
    commit: str
    inside: str = ""  # the path below the snapshot folder ("": the folder itself)

    @property
    def name(self) -> str:
        """The repo's name: what a base folder's name is for a local base (the output's default name)."""
        return self.repo_id.rpartition("/")[2]


def parse_ref(text: str) -> HubRef | None:
    """ORG/NAME[@REVISION][:FILE.gguf] → HubRef; None when the text is not of that form."""
    m = _REF.fullmatch(text)
    if not m or "--" in m["repo"] or ".." in m["repo"] or len(m["repo"]) > 96:
        return None
    file = m["file"]
    if file is not None:
        pure = PurePosixPath(file)
        if not is_gguf(Path(file)) or pure.is_absolute() or any(p in ("", ".", "..") for p in file.split("/")):
            raise InputError(f"{text}: only a .gguf file can be named in a Hub repo (ORG/NAME:FILE.gguf); "
                             "a HuggingFace model is ORG/NAME")
    return HubRef(m["repo"], m["revision"], file)


def hub_ref(base: Path | HubRef) -> HubRef | None:
    """The rule: a HubRef as it is; a path that exists (even a broken link) is local (None); else a text of the
    Hub id form is a HubRef; else None (the base is then not found, said by whoever reads it)."""
    if isinstance(base, HubRef):
        return base
    if os.path.lexists(base):
        return None
    return parse_ref(str(base))


def cache_snapshot(path: Path) -> Snapshot | None:
    """The repo and commit of a path inside huggingface_hub's cache (a snapshot folder, or a file in one), whoever
    fetched it (`hf download ID` without --local-dir leaves the same layout); None for any other path."""
    parts = Path(path).absolute().parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return Snapshot(parts[i - 1][len("models--"):].replace("--", "/"), parts[i + 1],
                            "/".join(parts[i + 2:]))
    return None


def fetch(ref: HubRef, *, allow_pickle: bool = False) -> tuple[Path, HubBase]:
    """Download (or find in the cache) what a run reads of the repo: the snapshot folder of a HF model, or the
    GGUF file of ORG/NAME:FILE.gguf; and the commit it resolved to. One InputError line when it cannot."""
    from huggingface_hub import hf_hub_download, snapshot_download

    revision = ref.revision or DEFAULT_REVISION
    try:
        if ref.filename is not None:
            path = Path(hf_hub_download(ref.repo_id, ref.filename, revision=revision))
        else:
            path = Path(snapshot_download(ref.repo_id, revision=revision, allow_patterns=list(first_files())))
            if not (path / "config.json").is_file():
                gguf = f"a GGUF file in the repo is given as {ref.repo_id}:FILE.gguf"
                raise InputError(f"{_no_file(ref, 'config.json')} ({gguf})" if _offline() else
                                 f"{ref.text}: the repo has no config.json: not a transformers model ({gguf})")
            weights = weight_files(path, allow_pickle)
            if weights:  # from the commit the first download read, should the branch move in between
                first = cache_snapshot(path)
                path = Path(snapshot_download(ref.repo_id, revision=first.commit if first else revision,
                                              allow_patterns=weights))
                missing = [w for w in weights if "*" not in w and not (path / w).is_file()]
                if missing:
                    raise InputError(_no_file(ref, missing[0]) if _offline() else
                                     f"{ref.text}: {missing[0]}, named by its weight index, is not in the repo")
    except InputError:
        raise
    except Exception as exc:  # huggingface_hub's and httpx's errors, each mapped to one line
        raise InputError(refusal(exc, ref)) from None
    snapshot = cache_snapshot(path)
    commit = snapshot.commit if snapshot is not None else revision
    return path, HubBase(ref.repo_id, revision, commit, ref.filename)


def quiet_downloads() -> None:
    """-q: huggingface_hub's download bars off, by its own switch (HF_HUB_DISABLE_PROGRESS_BARS, read when it is
    imported; and its function, when it already is)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def first_files() -> tuple[str, ...]:
    """What the first download fetches: config, tokenizer, card, and a single-file safetensors model or the
    index that names the shards (fetched second, by name: weight_files)."""
    return CONFIG_FILES + TOKENIZER_FILES + SAFETENSORS_FILES


def weight_files(snapshot: Path, allow_pickle: bool) -> list[str]:
    """The weight files to fetch after first_files(), as huggingface_hub allow_patterns: the shards the safetensors
    index names (none when model.safetensors is there: transformers loads it and ignores the index); the pickle
    weights when there are no safetensors and --allow-pickle is given; else []."""
    if (snapshot / "model.safetensors").is_file():
        return []
    if (snapshot / "model.safetensors.index.json").is_file():
        from ropeconv.checkpoint.hf import _weight_map  # the index read and checked as the run reads it

        weight_map = _weight_map(snapshot)
        return sorted(set(weight_map.values())) if weight_map else []
    return list(PICKLE_PATTERNS) if allow_pickle else []


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _why_not_reached(exc: BaseException | None = None) -> str:
    if _offline():
        return "HF_HUB_OFFLINE is set"
    cause = (exc.__cause__ or exc.__context__) if exc is not None else None
    return "the Hub cannot be reached" + (f" ({type(cause).__name__})" if cause is not None else "")


def _not_cached(ref: HubRef, exc: BaseException | None = None) -> str:
    """What of the reference the cache lacks, looked for as huggingface_hub looks: the repo's folder,
    refs/REVISION (or a commit's snapshot folder), then the file."""
    storage = _cache_dir() / ("models--" + ref.repo_id.replace("/", "--"))
    revision = ref.revision or DEFAULT_REVISION
    ref_file = storage / "refs" / revision
    commit = revision if _COMMIT.fullmatch(revision) else \
        (ref_file.read_text().strip() if ref_file.is_file() else None)
    if not storage.is_dir():
        what = ref.repo_id
    elif commit is None or not (storage / "snapshots" / commit).is_dir():
        what = f"revision {revision} of {ref.repo_id}"
    else:
        what = f"{ref.filename or 'a file'} of {ref.repo_id}@{revision}"
    return f"{ref.text}: {what} is not in the Hugging Face cache ({_cache_dir()}) and {_why_not_reached(exc)}"


def _no_file(ref: HubRef, name: str) -> str:
    return (f"{ref.text}: {name} of {ref.repo_id}@{ref.revision or DEFAULT_REVISION} is not in the Hugging Face "
            f"cache ({_cache_dir()}) and {_why_not_reached()}")


def refusal(exc: BaseException, ref: HubRef) -> str:
    """huggingface_hub's exception for a fetch of `ref` as one line."""
    from huggingface_hub import errors

    repo, revision = ref.repo_id, ref.revision or DEFAULT_REVISION
    if isinstance(exc, errors.GatedRepoError):
        return (f"{ref.text}: a gated repo: accept its conditions at https://huggingface.co/{repo} and give a token "
                "that may read it (HF_TOKEN, or `hf auth login`)")
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"{ref.text}: {repo} has no revision {revision!r} on the Hub"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (f"{ref.text}: no model repo {repo} on the Hub (or a private one: give a token that may read it, "
                "HF_TOKEN or `hf auth login`)")
    if isinstance(exc, errors.DisabledRepoError):
        return f"{ref.text}: {repo} is disabled on the Hub"
    if isinstance(exc, errors.IncompleteSnapshotError):  # offline, and the cached listing names missing files
        missing = str(exc).partition(" is incomplete: ")[2].partition(". ")[0] or "files are missing"
        return (f"{ref.text}: the cached snapshot of {repo}@{revision} is incomplete ({missing}) and "
                f"{_why_not_reached(exc)}")
    if isinstance(exc, errors.LocalEntryNotFoundError):  # offline or unreachable, and not cached
        return _not_cached(ref, exc)
    if isinstance(exc, errors.EntryNotFoundError):
        return f"{ref.text}: {repo}@{revision} has no file {ref.filename or ''}".rstrip()
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return _not_cached(ref, exc)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{ref.text}: fetching from the Hub failed ({type(exc).__name__}{': ' + first if first else ''})"
