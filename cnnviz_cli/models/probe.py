"""Forward hooks that capture what each conv block computes, and always come off again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from cnnviz_cli.config import STAGES
from cnnviz_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.models.network import Net



def check_layers(model: Net, layers: Sequence[str] | None) -> list[str]:
    """The requested conv layer names (all of them when none are given); unknown names are refused."""
    valid = list(model.conv_names)
    if not layers:
        return valid
    unknown = [name for name in layers if name not in valid]
    if unknown:
        raise UsageError(f"Unknown layer {', '.join(repr(u) for u in unknown)}.", f"Valid layers: {', '.join(valid)}.")
    return list(dict.fromkeys(layers))


def check_stages(stages: Sequence[str]) -> list[str]:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(f"Unknown stage {', '.join(repr(u) for u in unknown)}.", f"Valid stages: {', '.join(STAGES)}, all.")
    return list(dict.fromkeys(stages))


@contextlib.contextmanager
def capture_activations(
    model: Net, layers: Sequence[str], stages: Sequence[str] = STAGES
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of ``stage`` of each ``layer`` under the key ``'<layer>.<stage>'``.

    The dict fills as the model runs inside the block (later forward passes overwrite earlier
    ones); the hooks are removed when the block ends, also when it ends with an exception.
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(key: str):
        def hook(_module, _inputs, output):
            captured[key] = output.detach()

        return hook

    try:
        for layer in check_layers(model, layers):
            block = model.block(layer)
            for stage in check_stages(stages):
                handles.append(block[stage].register_forward_hook(hook_for(f"{layer}.{stage}")))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
