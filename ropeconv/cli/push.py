"""ropeconv push: upload an existing output to the Hugging Face Hub, as `extend --push-to-hub` does."""

from __future__ import annotations

import click

from ropeconv.cli.options import PATH, emit_json

EPILOG = """\b
Examples:
  ropeconv push smol-32k/ me/SmolLM2-135M-YaRN-32k              # private repo, created if missing
  ropeconv push smol-32k/ me/SmolLM2-135M-YaRN-32k --public --message "YaRN x4, proven in 3 runtimes"
  ropeconv push model-32k.gguf me/model-32k-GGUF                # a GGUF base's output: the one file

Sends the files the output's manifest lists and manifest.json, in the folder's layout (safetensors at the root,
the .gguf beside them, onnx/), in one commit, once every file matches the sha256 the manifest records (exit 1
when one does not: nothing pushed). Needs HF_TOKEN or `hf auth login`. Exit 75: the upload failed.
"""


@click.command(epilog=EPILOG)
@click.argument("out", type=PATH)
@click.argument("repo")
@click.option("--private/--public", default=True, show_default=True, help="a repo created by the push is private (--public: public; an existing repo keeps its visibility)")
@click.option("--message", "-m", help="the commit message (default: the method, the lengths and the parity result "
              "per format, from the manifest)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable result on stdout")
def push(out, repo, private, message, as_json) -> int:
    """Upload OUT (a ropeconv output folder, or a GGUF base's .gguf output) to the Hub repo REPO in one commit."""
    from ropeconv.errors import InputError
    from ropeconv.hub import push as hub

    hub.check_repo_id(repo, "REPO")
    if message is not None and not message.strip():
        raise InputError("--message: an empty commit message")
    upload = hub.checked_upload(out, message)
    hub.check_can_push(f"pushing to {repo}")
    pushed = hub.push(upload, repo, private=private)
    if as_json:
        emit_json(dict(pushed.to_json(), out=str(out), message=upload.message))
    else:
        click.echo(f"pushed {out} to {repo} ({len(pushed.files)} files in one commit)"
                   + (f": {pushed.url}" if pushed.url else ""))
    return 0
