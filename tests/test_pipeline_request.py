"""Serving request decoding (deploy.request): image formats, ordering, and one-line errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deploy.request import RequestError, decode_image, parse_episode

SHAPE = (1, 8, 8)


def png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_every_image_form_decodes_to_the_model_shape():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    expected = gray[None]
    assert np.array_equal(decode_image(png(gray), SHAPE, 0), expected)
    assert np.array_equal(decode_image(gray.tolist(), SHAPE, 0), expected)
    assert np.array_equal(decode_image(gray[..., None].tolist(), SHAPE, 0), expected)
    assert np.array_equal(decode_image(gray[None].tolist(), SHAPE, 0), expected)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    assert np.array_equal(decode_image(rgb.transpose(2, 0, 1).tolist(), SHAPE, 0), expected)
    assert decode_image(png(rgb), (3, 4, 4), 0).shape == (3, 4, 4)  # resized, kept in colour


def test_support_is_ordered_class_by_class_and_query_keeps_request_order():
    images = [np.full((8, 8), v, dtype=np.uint8) for v in (10, 20, 30, 40, 50)]
    frame = pd.DataFrame(
        {
            "role": ["support", "query", "support", "support", "support"],
            "label": ["b", None, "a", "b", "a"],
            "image": [png(images[0]), images[1].tolist(), png(images[2]), png(images[3]), png(images[4])],
        }
    )
    episode = parse_episode(frame, SHAPE)
    assert episode.class_names == ["b", "a"]
    assert episode.support_labels.tolist() == [0, 0, 1, 1]
    assert episode.support[:, 0, 0, 0].tolist() == [10, 40, 30, 50]
    assert episode.query.shape == (1, 1, 8, 8) and episode.query[0, 0, 0, 0] == 20


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame({"role": ["query"], "image": ["x"]}), "no support rows"),
        (pd.DataFrame({"role": ["support", "support"], "label": ["a", "b"], "image": ["x", "y"]}), "no query rows"),
        (pd.DataFrame({"role": ["support", "query"], "image": ["x", "y"]}), "row 0: support rows need a label"),
        (
            pd.DataFrame({"role": ["support", "Query"], "label": ["a", None], "image": ["x", "y"]}),
            "row 1: role must be",
        ),
        (pd.DataFrame({"role": ["support"], "label": ["a"]}), "missing column(s) image"),
        (
            pd.DataFrame({"role": ["support", "support", "query"], "label": ["a", "a", None], "image": ["x"] * 3}),
            "give at least 2 labels",
        ),
        (
            pd.DataFrame(
                {"role": ["support", "support", "query"], "label": ["a", "b", None], "image": ["x", "y", "z"]}
            ),
            "row 0: image is not a base64-encoded PNG or JPEG",
        ),
    ],
)
def test_malformed_requests_are_rejected_with_a_clear_message(frame, message):
    with pytest.raises(RequestError) as info:
        parse_episode(frame, SHAPE)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "value, message",
    [
        ([[1, 2], [3]], "rectangular list of numbers"),
        ([[[[1]]]], "is not H×W, H×W×C or C×H×W"),
        ([[0, 300], [1, 2]], "values must be numbers in 0-255"),
        ([["a", "b"]], "rectangular list of numbers"),
        (png(np.zeros((8, 8), np.uint8))[:40], "not a base64-encoded PNG"),
    ],
)
def test_undecodable_images_name_the_row(value, message):
    with pytest.raises(RequestError) as info:
        decode_image(value, SHAPE, 7)
    assert str(info.value).startswith("row 7: ") and message in str(info.value)
