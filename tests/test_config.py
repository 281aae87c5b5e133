"""config.py: each allowed set of values is checked once, with a message naming the option and choices."""

from __future__ import annotations

import pytest

from cnnviz_cli.config import (
    MODEL_FILE,
    NORMALIZE_MODES,
    ModelConfig,
    TrainConfig,
    check_batch_size,
    check_max_filters,
    check_normalize,
    check_top,
)
from cnnviz_cli.errors import UsageError


def test_checks_return_good_values_and_name_the_option_for_bad_ones():
    assert [check_normalize(mode) for mode in NORMALIZE_MODES] == ["per-layer", "per-filter"]
    assert (check_batch_size(1), check_top(3), check_max_filters(64)) == (1, 3, 64)
    with pytest.raises(UsageError) as bad_mode:
        check_normalize("per-pixel")
    assert bad_mode.value.message == "Unknown --normalize value 'per-pixel'."
    assert bad_mode.value.hint == "Choose one of: per-layer, per-filter."
    for check, option in ((check_batch_size, "--batch-size"), (check_top, "--top"), (check_max_filters, "--max-filters")):
        with pytest.raises(UsageError, match=f"^{option} must be at least 1, got 0.$"):
            check(0)


def test_train_config_uses_the_batch_size_check():
    with pytest.raises(UsageError, match="^--batch-size must be at least 1, got 0.$"):
        TrainConfig(batch_size=0)


def test_model_config_from_manifest_is_the_trained_architecture():
    manifest = {"options": TrainConfig(model=ModelConfig(channels=(4, 8), kernel_size=3)).to_dict()}
    assert ModelConfig.from_manifest(manifest) == ModelConfig(channels=(4, 8), kernel_size=3)
    assert ModelConfig.from_manifest({}) == ModelConfig()  # runs that recorded no model: the default CNN
    assert MODEL_FILE == "model.safetensors"
