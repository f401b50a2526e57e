"""The sha256 of every file a fixed set of tiny conversions writes, one line each: a refactor that must not change
outputs is checked by running this before and after it and comparing the two listings (`diff`).

    python -m tools.output_hashes WORKDIR > hashes.txt          # tiny conversions only (~3 min on 2 cores)
    python -m tools.output_hashes WORKDIR --demo SMOL > hashes.txt   # and the demo recipe on SmolLM2 (SMOL: its folder)

The tiny bases are made the way the tests make them (tests/conftest.make_tiny: seeded, so the same bytes on every
run); manifests hold no timestamps or host names, so equal code gives equal listings.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (name, family, extend arguments): every format, the method kinds (rope, ALiBi, absolute table), a LoRA-free
# recipe, a GGUF retrofit and the card options
CONVERSIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("llama-yarn-all", "llama", ("--method", "yarn", "--factor", "4", "--to", "safetensors,gguf,onnx")),
    ("llama-linear-q8", "llama", ("--method", "linear", "--factor", "2", "--to", "safetensors,gguf",
                                  "--outtype", "q8_0", "--name", "Tiny-Linear", "--license", "mit", "--tag", "x",
                                  "--base-model", "org/tiny")),
    ("llama-ntk-onnx16", "llama", ("--method", "ntk", "--factor", "4", "--to", "onnx", "--dtype", "fp16")),
    ("llama-llama3-bf16", "llama", ("--method", "llama3", "--factor", "8", "--to", "gguf", "--outtype", "bf16")),
    ("llama-dynamic", "llama", ("--method", "dynamic", "--factor", "2", "--max-shard-size", "20KB")),
    ("mistral-yarn", "mistral", ("--method", "yarn", "--factor", "2", "--to", "safetensors,gguf,onnx")),
    ("qwen2-yarn", "qwen2", ("--method", "yarn", "--target-ctx", "1024", "--to", "safetensors,gguf")),
    ("gpt2-absolute", "gpt2", ("--method", "absolute", "--factor", "2", "--to", "safetensors,gguf,onnx")),
    ("bloom-alibi", "bloom", ("--method", "alibi", "--original-ctx", "256", "--factor", "4",
                              "--to", "safetensors,onnx")),
    ("bloom-none-gguf", "bloom", ("--method", "none", "--original-ctx", "256", "--to", "gguf")),
)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def listing(root: Path, label: str) -> list[str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [f"{label}/{p.relative_to(root) if p != root else p.name} {sha256(p)}" for p in files]


def run(*args: str) -> None:
    from ropeconv.cli.main import main

    rc = main(list(args))
    if rc != 0:
        raise SystemExit(f"ropeconv {' '.join(args)}: exit {rc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--demo", type=Path, help="the SmolLM2-135M folder (make demo's work/smollm2-135m)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import ropeconv
    from ropeconv.fixtures.tokenizers import add_byte_level_bpe
    from tests.conftest import make_tiny  # the tests' seeded tiny models

    print(f"# ropeconv from {Path(ropeconv.__file__).parent}", file=sys.stderr)
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bases = {family: add_byte_level_bpe(make_tiny(work / "bases", family)) for family in {c[1] for c in CONVERSIONS}}
    lines: list[str] = []
    for name, family, extra in CONVERSIONS:
        out = work / name
        run("extend", str(bases[family]), *extra, "--no-verify", "-q", "-o", str(out))
        lines += listing(out, name)
    # the command line saved as a recipe (its paths are absolute: compare listings made in the same WORKDIR)
    run("extend", str(bases["llama"]), "--method", "yarn", "--factor", "4", "--to", "safetensors,gguf,onnx",
        "--outtype", "q8_0", "--dtype", "fp16", "--card-title", "T", "--tag", "a", "--tokens", "64", "--no-verify",
        "--dry-run", "-o", str(work / "unused"), "--save-recipe", str(work / "saved.yaml"))
    lines += listing(work / "saved.yaml", "saved-recipe")
    gguf = next((work / "llama-yarn-all").glob("*.gguf"))
    run("extend", str(gguf), "--method", "yarn", "--factor", "8", "--rebase", "--no-verify", "-q",
        "-o", str(work / "retrofit.gguf"))
    lines += listing(work / "retrofit.gguf", "retrofit")
    recipe = work / "tiny.yaml"
    recipe.write_text(f"base:\n  path: {bases['llama']}\nmethod:\n  name: yarn\n  factor: 4\n"
                      "outputs:\n  - format: safetensors\n  - format: gguf\n    outtype: q8_0\n  - format: onnx\n"
                      "out: tiny-recipe-out\nparity:\n  verify: false\ncard:\n  title: Tiny\n  tags: [a, b]\n")
    run("recipe", "run", str(recipe), "-q")
    lines += [line.replace(f"{work}/", "") for line in listing(work / "tiny-recipe-out", "recipe")]
    if args.demo:
        demo_out = work / "demo"
        recipe = work / "demo.yaml"  # a copy: the manifest records the recipe's path
        shutil.copyfile(REPO / "recipes/smollm2-135m-yarn-32k.yaml", recipe)
        run("recipe", "run", str(recipe), "-q", "--set", f"base.path={args.demo.resolve()}", "--set", f"out={demo_out}")
        lines += listing(demo_out, "demo")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
