"""A small client for a served learn2tune model (``learn2tune serve``): support + query -> labels.

Standard library, numpy and Pillow only (no ``requests``), so a service can vendor this file::

    from deploy.client import FewShotClient

    client = FewShotClient("http://127.0.0.1:5001")
    predictions = client.predict(support=[("cat", cat_png_bytes), ("dog", dog_array)], query=[img1, img2])
    predictions[0].label, predictions[0].probabilities

Images may be PNG/JPEG bytes, base64 strings of them, PIL images or uint8 arrays (H×W, H×W×C or
C×H×W). Arrays and PIL images are sent as base64 PNGs.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Image = Any  # bytes | str (base64) | PIL.Image.Image | numpy array


class ServingError(RuntimeError):
    """The server refused the request (``status`` 4xx: the message says what is wrong) or failed."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    notes: str = ""


class FewShotClient:
    """Calls ``POST {url}/invocations`` of an MLflow scoring server serving a learn2tune model."""

    def __init__(self, url: str = "http://127.0.0.1:5001", timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def ping(self) -> bool:
        """Whether the server answers its health check."""
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=self.timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def predict(self, support: Sequence[tuple[str, Image]], query: Sequence[Image]) -> list[Prediction]:
        """One prediction per query image, in order."""
        rows = self.invoke(request_body(support, query))["predictions"]
        return [Prediction(row["label"], row["probabilities"], row.get("notes") or "") for row in rows]

    def invoke(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a raw JSON body; the decoded JSON answer, or :class:`ServingError`."""
        request = urllib.request.Request(
            f"{self.url}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise ServingError(error.code, _error_message(error.read())) from None


def request_body(support: Sequence[tuple[str, Image]], query: Sequence[Image]) -> dict[str, Any]:
    """The scoring server's ``dataframe_split`` JSON: one row (role, label, image) per image."""
    data: list[list[str | None]] = [["support", str(label), encode_image(image)] for label, image in support]
    data += [["query", None, encode_image(image)] for image in query]
    return {"dataframe_split": {"columns": ["role", "label", "image"], "data": data}}


def encode_image(image: Image) -> str:
    """A base64 PNG/JPEG string for any accepted image form."""
    if isinstance(image, str):
        return image
    if isinstance(image, (bytes, bytearray)):
        return base64.b64encode(bytes(image)).decode()
    from PIL import Image as PILImage

    if not isinstance(image, PILImage.Image):
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)  # C×H×W -> H×W×C
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 (0-255), got {array.dtype}")
        image = PILImage.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _error_message(payload: bytes) -> str:
    try:
        return json.loads(payload).get("message", payload.decode(errors="replace"))
    except (ValueError, AttributeError):
        return payload.decode(errors="replace")
