"""The server's request limits and its one error type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    """Request limits; a request beyond one gets a 4xx answer that names the limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_k: int = Field(default=1000, ge=1, description="Most items one /recommend answers.")
    max_history: int = Field(
        default=1000, ge=1, description="Items in a request's history (only the last max_length feed the model)."
    )
    max_id_chars: int = Field(default=511, ge=1, description="Longest item or user id.")
    max_text_chars: int = Field(default=2000, ge=1, description="Longest text of an added item.")
    max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1, description="Largest image file (decoded base64).")
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="Width x height of an uploaded image, checked before decoding."
    )
    max_aspect_ratio: int = Field(
        default=20, ge=1, description="Longest side over shortest side; a longer strip is refused before decoding."
    )
    max_resized_pixels: int = Field(
        default=4_000_000,
        ge=1,
        description="Pixels of an image after its short side is resized (before the centre crop), checked first.",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1, description="Whole request body, declared or streamed (base64 is 4/3 of bytes)."
    )
    max_results: int = Field(default=100, ge=1, description="Most entries of a search listing.")
    display_image_size: int = Field(default=224, ge=1, description="Side of the square image kept for the page.")
    max_encoder_wait_s: int = Field(
        default=60, ge=0, description="Longest a POST /items waits for the item encoders while they load at start-up."
    )


LIMITS = Limits()


class ServiceError(Exception):
    """A request the service refuses: HTTP status and a message naming what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
