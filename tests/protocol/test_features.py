"""The features operation's wire models and checks (protocol 1.3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bbt.protocol import (
    FEATURES_CAPABILITY,
    FeaturesRequest,
    ModelInfo,
    ProtocolViolation,
    Tensor,
    wire_json,
)
from bbt.protocol.features import check_features_request
from bbt.server import MockBackend

INFO: ModelInfo = MockBackend().info


def test_the_features_capability_is_hidden_from_clients_older_than_1_3() -> None:
    info = INFO.model_copy(update={"capabilities": [FEATURES_CAPABILITY, "sessions"]})
    for version, want in (("1.1", ["sessions"]), ("1.2", ["sessions"]), ("1.3", None)):
        seen = json.loads(wire_json(info, version))["capabilities"]
        assert seen == (want if want is not None else [FEATURES_CAPABILITY, "sessions"])


def test_no_prompts_is_one_empty_prompt() -> None:
    req = FeaturesRequest(model=INFO.id, texts=["a [MASK] b"])
    decoded = check_features_request(req, INFO)
    assert decoded.prompts.shape == (1, 0, INFO.hidden_size)
    assert decoded.pooling == "mean"


@pytest.mark.parametrize(
    ("prompts", "field"),
    [
        (np.zeros((2, 3, 8), np.float32), "prompts.shape"),
        (np.zeros((2, 1, 3, 64), np.float32), "prompts.shape"),
        (np.zeros((65, 1, 64), np.float32), "prompts.shape"),
        (np.full((1, 1, 64), np.inf, np.float32), "prompts.data"),
    ],
    ids=["width", "deep", "too-many", "non-finite"],
)
def test_bad_prompts_name_their_field(prompts: np.ndarray, field: str) -> None:  # type: ignore[type-arg]
    req = FeaturesRequest(model=INFO.id, texts=["a [MASK]"], prompts=Tensor.from_numpy(prompts))
    with pytest.raises(ProtocolViolation) as err:
        check_features_request(req, INFO)
    assert err.value.field == field
