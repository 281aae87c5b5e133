"""Theoretical receptive fields of the conv blocks, derived from a ModelConfig.

Each layer (kernel ``k``, stride ``s``, padding ``p``) maps the description of its input's grid to its
output's grid by the standard recurrence (Araujo et al., "Computing Receptive Fields of CNNs", 2019):

    size_out  = size_in + (k - 1) * jump_in        how many input pixels one unit sees
    jump_out  = jump_in * s                        input pixels between neighbouring units
    start_out = start_in + ((k - 1) / 2 - p) * jump_in   centre of unit 0's field, in input pixels
    n_out     = (n_in + 2 p - k) // s + 1

Input pixel ``i`` has its centre at coordinate ``i``; the image starts with size 1, jump 1, start 0.
Padding makes ``start`` smaller, and a field can reach past the border: such parts see zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.errors import UsageError

__all__ = ["ReceptiveField", "receptive_fields", "field_for", "network_fields"]

POOL_KERNEL = 2  # every block ends with nn.MaxPool2d(2): kernel 2, stride 2, no padding


@dataclass(frozen=True)
class ReceptiveField:
    """The grid of one layer's output (``stage`` 'conv' also holds for its ReLU, which is elementwise)."""

    layer: str
    stage: str  # 'conv' (conv and ReLU output) or 'pool'; 'output' for a layer of another network
    output_size: int
    size: int
    jump: int
    start: Fraction

    def window(self, y: int, x: int) -> tuple[int, int]:
        """Top-left input pixel (row, column) of the ``size``×``size`` field of unit (y, x); may be negative."""
        half = Fraction(self.size - 1, 2)
        top = self.start + y * self.jump - half
        left = self.start + x * self.jump - half
        # start and size always agree in parity, so the corners are whole pixels.
        assert top.denominator == 1 and left.denominator == 1, (self, y, x)
        return int(top), int(left)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["start"] = float(self.start)
        return data


def _step(size: int, jump: int, start: Fraction, n: int, k: int, s: int, p: int):
    return (
        size + (k - 1) * jump,
        jump * s,
        start + (Fraction(k - 1, 2) - p) * jump,
        (n + 2 * p - k) // s + 1,
    )


def receptive_fields(config: ModelConfig) -> list[ReceptiveField]:
    """Receptive field of every conv block's conv/ReLU output and of its pooled output, in order."""
    size, jump, start, n = 1, 1, Fraction(0), config.image_size
    fields: list[ReceptiveField] = []
    for layer in config.conv_names:
        size, jump, start, n = _step(size, jump, start, n, config.kernel_size, 1, config.padding)
        fields.append(ReceptiveField(layer, "conv", n, size, jump, start))
        size, jump, start, n = _step(size, jump, start, n, POOL_KERNEL, POOL_KERNEL, 0)
        fields.append(ReceptiveField(layer, "pool", n, size, jump, start))
    return fields


def field_for(config: ModelConfig, layer: str, stage: str = "relu") -> ReceptiveField:
    """The field of ``layer`` at ``stage`` ('conv' and 'relu' share one field, 'pool' has its own)."""
    wanted = "pool" if stage == "pool" else "conv"
    for field in receptive_fields(config):
        if field.layer == layer and field.stage == wanted:
            return field
    raise KeyError(layer)


def network_fields(model, config: ModelConfig, layers=None) -> list[ReceptiveField]:
    """Fields of any network: the plain CNN's from its config (all blocks); another network's for ``layers``
    (default: every layer with a spatial output), traced through its graph (``models.layers``)."""
    from cnnviz_cli.models.layers import layer_table
    from cnnviz_cli.models.probe import OUTPUT, is_plain_cnn

    if is_plain_cnn(model):
        return receptive_fields(config)
    rows = {row.name: row for row in layer_table(model, config.in_channels, config.image_size)}
    names = list(layers) if layers else [name for name, row in rows.items() if row.spatial]
    fields = []
    for name in names:
        row = rows[name]
        field = row.field
        if field is None or field.whole or not row.spatial:
            raise UsageError(f"Layer {name} has no spatial output at this input size, so it has no patches.")
        if field.size[0] != field.size[1] or field.jump[0] != field.jump[1] or field.start[0] != field.start[1]:
            raise UsageError(f"Layer {name} has a non-square receptive field ({field.label()}); patches need a square one.")
        fields.append(ReceptiveField(name, OUTPUT, row.output_shape[-1], field.size[0], field.jump[0], field.start[0]))
    return fields
