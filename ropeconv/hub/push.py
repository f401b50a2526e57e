"""Publish a ropeconv output to the Hugging Face Hub: one repo, one commit, exactly the files that were proven.

What is sent: an output folder's files as its manifest lists them, plus manifest.json, at the paths they have in
the folder — ropeconv's output layout: the safetensors, config.json, tokenizer files and the card (README.md) at
the repo's root, the .gguf beside them, the ONNX model and its own config under onnx/ (the Hub's llama.cpp
integration finds a .gguf anywhere in a repo). A file in the folder that the manifest does not list stays behind.
A GGUF base's output is one .gguf file: it is sent alone, at the repo's root.

`HfApi.create_repo` (private unless --public; exist_ok, so an existing repo keeps its visibility and gets a new
commit), then one `HfApi.create_commit` of `CommitOperationAdd`s whose message names the method, the lengths and
the parity result per format. `extend --push-to-hub` pushes after the output is published (parity passed, files in
place, still under the output's lock); `ropeconv push OUT REPO` pushes an existing output once its files match
the sha256 its manifest records. huggingface_hub is imported only when a repo id is checked or a push runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropeconv.errors import InputError, RopeconvError
from ropeconv.formats import is_gguf
from ropeconv.manifest import (
    MANIFEST_NAME,
    ChangedFiles,
    Manifest,
    changed_files,
    describe_changes,
    find_manifest,
    load_manifest,
)

# EX_TEMPFAIL (sysexits.h): the upload failed; with extend the output was published and stands (as for 74, the
# report lost), and `ropeconv push OUT REPO` repeats the upload
PUSH_FAILED = 75
MAX_REASON_CHARS = 300


class PushFailed(RopeconvError):
    exit_code = PUSH_FAILED


@dataclass(frozen=True)
class Upload:
    """What one push sends: (path in the repo, local file), sorted by path, and the commit message."""

    source: Path  # the output folder, or the .gguf file
    files: tuple[tuple[str, Path], ...]
    message: str


@dataclass(frozen=True)
class Pushed:
    repo: str
    private: bool  # what create_repo was asked for (an existing repo keeps its own visibility)
    files: tuple[str, ...]  # the paths in the repo, as sent
    url: str | None  # the commit's URL, as the Hub answers

    def to_json(self) -> dict[str, Any]:
        return {"repo": self.repo, "private": self.private, "files": list(self.files), "commit_url": self.url}


def check_repo_id(repo: str, called: str) -> None:
    """ORG/NAME (or NAME, in the token's own namespace) as the Hub accepts it; one InputError line otherwise."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise InputError(f"{called} {repo!r}: expected a Hub repo id such as ORG/NAME (letters, digits and - _ .)") \
            from None


def check_can_push(called: str) -> None:
    """Before any work: a run that would end in an upload needs a token and the network allowed."""
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise InputError(f"{called}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or push later with "
                         "`ropeconv push OUT REPO`")
    if not get_token():
        raise InputError(f"{called}: no Hugging Face token (set HF_TOKEN or run `hf auth login`)")


# ----------------------------------------------------------------------------- the commit message


def _number(x: float) -> str:
    """9.5e-4, not 0.00095 or 9.5e-04."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def commit_message(method: str, original_ctx: Any, target_ctx: Any, parity: Sequence[tuple[str, bool]] | None,
                   *, note: str = "") -> str:
    """"ropeconv: yarn 8192 → 32768; parity passed: transformers 9.5e-4, llama.cpp 6.8e-3" — parity: one
    (label, passed) per format in the output's order; None: not checked."""
    head = f"ropeconv: {method} {original_ctx} → {target_ctx}"
    if not parity:
        return f"{head}; parity not checked (--no-verify)"
    verdict = "passed" if all(ok for _, ok in parity) else "failed"
    return f"{head}; parity {verdict}: {', '.join(label for label, _ in parity)}{note}"


def report_label(report: Any) -> str:
    """A parity report as the message names it: the runtime and its max |Δlogit| over the strictly judged bands
    (a quantized GGUF judged by its KL alone: that)."""
    strict = [b for b in report.bands if not b.quantized]
    if strict or not report.bands:
        return f"{report.runtime} {_number(report.max_abs_logit)}"
    return f"{report.runtime} KL {_number(max(b.mean_kl for b in report.bands))}"


def _manifest_message(manifest: Manifest) -> str:
    plan = manifest.plan or {}
    parity: Mapping[str, Any] = manifest.data.get("parity") or {}
    rows = [(str((record or {}).get("runtime") or fmt), bool((record or {}).get("passed")))
            for fmt, record in parity.items()]
    return commit_message(str(manifest.data.get("method") or plan.get("method")), plan.get("original_ctx"),
                          plan.get("target_ctx"), rows or None, note=" (as manifest.json records)")


# ----------------------------------------------------------------------------- what is sent


def _files(out: Path, manifest: Manifest | None) -> tuple[tuple[str, Path], ...]:
    if manifest is None:  # a GGUF base's output: the one file
        return ((out.name, out),)
    return tuple((rel, out / rel) for rel in sorted({*manifest.files, MANIFEST_NAME}))


def upload_of_result(result: Any, message: str | None = None) -> Upload:
    """An extend run's published output (ExtendResult): its files, and a message with each format's parity."""
    out = Path(result.out)
    manifest = load_manifest(out) if out.is_dir() else None
    reports = tuple(result.reports) or ((result.parity,) if result.parity is not None else ())
    plan = result.plan
    text = message or commit_message(plan.method, plan.original_ctx, plan.target_ctx,
                                     [(report_label(r), r.passed) for r in reports] or None)
    return Upload(out, _files(out, manifest), text)


def checked_upload(out: Path, message: str | None = None) -> Upload:
    """An existing output for `ropeconv push`: a folder with ropeconv's manifest.json whose listed files all match
    their recorded size and sha256 (else ChangedFiles, exit 1: what was proven is not what is there), or a .gguf
    that records ropeconv's plan (a GGUF base's output, which has no manifest). Anything else is an InputError."""
    out = Path(out)
    if not out.exists():
        raise InputError(f"{out}: not found")
    if out.is_file():
        if not is_gguf(out):
            raise InputError(f"{out}: not a ropeconv output (an output folder, or the .gguf of a GGUF base)")
        from ropeconv.provenance.gguf import recorded

        plan, _ = recorded(out)  # no ropeconv.plan: "not written by ropeconv?"
        home = find_manifest(out.parent)  # the .gguf of an output folder: checked against that folder's manifest
        if home is not None and out.name in home.files:
            changed = changed_files(home, lambda rel: rel == out.name)
            if changed:
                raise ChangedFiles(f"{describe_changes(out.parent, changed)}; nothing pushed")
        text = message or commit_message(plan.method, plan.original_ctx, plan.target_ctx, None).replace(
            "parity not checked (--no-verify)", "parity not recorded in a GGUF (`ropeconv verify` it)")
        return Upload(out, _files(out, None), text)
    manifest = find_manifest(out)
    if manifest is None:
        raise InputError(f"{out}: not a ropeconv output (no manifest.json written by ropeconv)")
    if manifest.plan is None:
        raise InputError(f"{manifest.where}: no plan recorded (not an extended model: an adapter?)")
    changed = changed_files(manifest)
    if changed:
        raise ChangedFiles(f"{describe_changes(out, changed)}; nothing pushed")
    return Upload(out, _files(out, manifest), message or _manifest_message(manifest))


# ----------------------------------------------------------------------------- the upload


def push(upload: Upload, repo: str, *, private: bool = True, published: bool = False) -> Pushed:
    """create_repo + one create_commit. A failure of either is PushFailed (one line; `published`: the line says
    the output was published and stands)."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HTTPError

    operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path)) for rel, path in upload.files]
    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        info = api.create_commit(repo, operations=operations, commit_message=upload.message, repo_type="model")
    except (OSError, ValueError, RuntimeError, HTTPError) as exc:
        reason = " ".join((str(exc) or type(exc).__name__).split())[:MAX_REASON_CHARS]
        if published:
            raise PushFailed(f"{upload.source} was published, but the push to {repo} failed ({reason}); push it "
                             f"with `ropeconv push {upload.source} {repo}`") from None
        raise PushFailed(f"the push of {upload.source} to {repo} failed ({reason}); nothing was committed") from None
    return Pushed(repo, private, tuple(rel for rel, _ in upload.files), getattr(info, "commit_url", None))
