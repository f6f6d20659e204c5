"""Regenerate the golden outputs of the tiny seeded components: `python tests/golden/make_golden.py`.

Each `<case>.safetensors` holds the fixed inputs and the output of the freshly built seeded component on
them. Regenerate only on purpose (an intended change of initialisation or forward), and say why in the
commit: test_components.py compares fresh outputs to these files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

GOLDEN_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(GOLDEN_DIR.parent))

import tiny  # noqa: E402


def golden_path(name: str) -> Path:
    """Where the golden file of case `name` lives."""
    return GOLDEN_DIR / f"{name}.safetensors"


def main() -> None:
    """Write one safetensors file per case: `input.<name>` tensors and `output`."""
    import transformers

    torch.set_num_threads(1)
    for name, builder in tiny.BUILDERS.items():
        inputs = tiny.golden_inputs(name)
        output = tiny.run_component(builder(), inputs)
        tensors = {f"input.{key}": value.contiguous() for key, value in inputs.items()}
        tensors["output"] = output.contiguous()
        metadata = {"generated_with": f"torch {torch.__version__}, transformers {transformers.__version__}"}
        save_file(tensors, str(golden_path(name)), metadata=metadata)
        print(f"{golden_path(name).name}: output {tuple(output.shape)}")


if __name__ == "__main__":
    main()
