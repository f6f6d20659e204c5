"""The model as a server holds it: the user encoder and the manifest's facts at once, the item side when loaded.

Ranking needs only the user encoder and the catalogue table. So a server whose table is cached answers /health
and /recommend before the item side (text and vision backbones: seconds to import and build) is loaded; the item
side loads in a background thread, and what needs it (POST /items, encoding the catalogue or a live item stored
for another model) waits for it. Every file of the model is verified at start-up, before anything is served, so
a damaged model folder still stops the server at once. A model given in memory is whole from the start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch

from pmmrec import integrity
from pmmrec.components import UserEncoder
from pmmrec.errors import ArtefactError
from pmmrec.model import MANIFEST_FILE, PMMRec, load_model_component, modalities_of
from pmmrec.serving.limits import ServiceError
from pmmrec.serving.table_cache import manifest_fingerprint, model_fingerprint
from pmmrec.slots import MODALITY_SLOTS, SLOT

# What POST /items carries of a new item, by the modality that reads it (the name `encoded_from` reports).
ADDABLE_CONTENT: dict[str, str] = {"text": "text", "vision": "image"}

log = logging.getLogger("pmmrec.serving")

LoadState = Literal["ready", "loading", "failed"]


class ServedModel:
    """A model's user encoder and content facts, with the whole model ready now or loading in the background."""

    def __init__(
        self,
        user: UserEncoder,
        *,
        types: dict[str, str],
        key: Callable[[], str],
        load: Callable[[], PMMRec] | None = None,
        model: PMMRec | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        if (load is None) == (model is None):
            raise ValueError("give exactly one of load and model")
        self.user = user
        self.types = types
        self.manifest = manifest  # pmmrec.json of a model loaded from a folder
        self._key = key
        self._load = load
        self._whole: Future[PMMRec] = Future()
        self._loader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._device = torch.device("cpu")
        if model is not None:
            self._whole.set_result(model)

    @classmethod
    def whole(cls, model: PMMRec, manifest: dict[str, Any] | None = None) -> ServedModel:
        """A model already loaded (built in memory or by the caller), where it is; its key hashes its tensors.

        Without a manifest (a model built in memory), its facts are described from the components
        (`model_manifest`)."""
        types = {slot: component.type_name for slot, component in model.components().items()}
        described = manifest if manifest is not None else model_manifest(model)
        served = cls(model.user, types=types, key=lambda: model_fingerprint(model), model=model, manifest=described)
        return served.to(model.device)

    @classmethod
    def of(cls, model: PMMRec | ServedModel) -> ServedModel:
        """`model` itself when it is a ServedModel, else the whole model it is."""
        return model if isinstance(model, ServedModel) else cls.whole(model)

    @classmethod
    def from_folder(cls, folder: Path, manifest: dict[str, Any]) -> ServedModel:
        """The user encoder of an assembled model folder now, the rest on `start_loading` (every file verified now).

        A manifest that pins only the weights, or an unverified load (PMMREC_ALLOW_UNVERIFIED=1), loads the whole
        model at once as `PMMRec.from_pretrained` does, since its files cannot be keyed by their pinned hashes.
        """
        key = manifest_fingerprint(manifest)
        if key is None or integrity.allow_unverified(False):
            return cls.whole(PMMRec.from_pretrained(folder), manifest)
        components = manifest["components"]
        if "user" not in components:
            raise ArtefactError(f"{folder / MANIFEST_FILE}: no user component")
        for slot, entry in components.items():
            if slot != "user":  # the user encoder is verified as it is loaded, just below
                pins = integrity.manifest_checksums(entry, slot, str(folder / MANIFEST_FILE), False)
                integrity.verify_component_folder(folder / entry["path"], expected=pins, source=MANIFEST_FILE)
        user = load_model_component(folder, manifest, "user")
        if not isinstance(user, UserEncoder):
            raise ArtefactError(f"{folder / MANIFEST_FILE}: components.user is a {user.type_name!r}, not a user encoder")
        return cls(
            user,
            types={slot: entry["type"] for slot, entry in components.items()},
            key=lambda: key,
            load=lambda: PMMRec.from_pretrained(folder, preloaded={"user": user}),
            manifest=manifest,
        )

    # ---- facts known at once -------------------------------------------------------------------------------

    @cached_property
    def key(self) -> str:
        """What the model's embeddings depend on (the table cache's and the live-item store's model key)."""
        return self._key()

    @property
    def modalities(self) -> frozenset[str]:
        """Which item modalities the model reads (as `PMMRec.modalities`)."""
        return modalities_of(self.types)

    @property
    def dim(self) -> int:
        return self.user.dim

    @property
    def max_length(self) -> int:
        return self.user.max_length

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def item_inputs(self) -> list[str]:
        """What the model reads of a new item's content: 'text' and/or 'image' (reported as `encoded_from`)."""
        return [name for slot, name in ADDABLE_CONTENT.items() if slot in self.types]

    @property
    def add_refusal(self) -> str | None:
        """Why this model cannot take new items (an ID item tower), or None when it can."""
        tower = self.types.get("item_tower")
        if tower is not None:
            return (
                f"this model has an ID item tower ({tower}): it can only score the items "
                "it was trained on; adding items by content needs a content model (text and/or vision encoder)"
            )
        unreadable = [slot for slot in MODALITY_SLOTS if slot in self.types and slot not in ADDABLE_CONTENT]
        if unreadable:
            kinds = ", ".join(f"{SLOT[slot].title.lower()} ({self.types[slot]})" for slot in unreadable)
            return f"this model reads content that POST /items does not carry: {kinds}"
        return None

    @property
    def needs_image(self) -> bool:
        """True when new items must come with an image (the model has a vision encoder)."""
        return "image" in self.item_inputs

    def to(self, device: torch.device) -> ServedModel:
        """Move the user encoder now and the item side when it is loaded (the model is in eval mode)."""
        self._device = torch.device(device)
        self.user.to(self._device).eval()
        if self._whole.done() and self._whole.exception() is None:
            self._whole.result().to(self._device).eval()
        return self

    # ---- the whole model -----------------------------------------------------------------------------------

    @property
    def state(self) -> LoadState:
        """'ready' when the whole model is loaded, 'loading' until then, 'failed' when loading it failed."""
        if not self._whole.done():
            return "loading"
        return "failed" if self._whole.exception() is not None else "ready"

    def start_loading(self) -> None:
        """Load the item side in a background thread (once; nothing to do for a whole model)."""
        with self._lock:
            if self._loader is not None or self._whole.done():
                return
            # not a daemon: the interpreter waits for a load in progress at exit instead of killing it inside torch
            self._loader = threading.Thread(target=self._run_load, name="pmmrec-item-encoders", daemon=False)
            self._loader.start()

    def _run_load(self) -> None:
        assert self._load is not None
        try:
            model = self._load()
            model.to(self._device).eval()
        except BaseException as exc:  # reported to whoever waits for the model, and logged now
            log.error("the item encoders failed to load: %s", exc)
            self._whole.set_exception(exc)
            return
        log.info("item encoders loaded")
        self._whole.set_result(model)

    def join(self, timeout: float | None = None) -> None:
        """Wait for a background load to end (a server shutting down lets it finish rather than cut it)."""
        loader = self._loader
        if loader is not None:
            loader.join(timeout)

    def model(self, timeout: float | None = None) -> PMMRec:
        """The whole model, waiting up to `timeout` seconds (None: as long as it takes) for it to load.

        Raises what loading raised, or TimeoutError.
        """
        self.start_loading()
        return self._whole.result(timeout)

    def model_for_request(self, timeout: float) -> PMMRec:
        """The whole model for a request: a 503 naming why when it failed to load or is still loading."""
        try:
            return self.model(timeout)
        except TimeoutError:
            raise ServiceError(503, f"the item encoders are still loading after {timeout:g} s; retry shortly") from None
        except Exception as exc:
            raise ServiceError(503, f"the item encoders failed to load ({exc})") from None


def model_manifest(model: PMMRec) -> dict[str, Any]:
    """The manifest of a model built in memory: each component's type and where it came from (no weight hashes)."""
    components = {}
    for slot, component in model.components().items():
        source = model.sources.get(slot)
        components[slot] = {
            "type": component.type_name,
            "requested": source.requested if source else None,
            "resolved_commit": source.resolved_commit if source else None,
            "created": source.created if source else True,
        }
    return {"pmmrec_type": "model/pmmrec", "dim": model.dim, "modalities": sorted(model.modalities), "components": components}
