"""The epoch loop's uint8 path (memory-mapped folders) and the training-only augmentation."""

from __future__ import annotations

import torch

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.models.network import Net
from cnnviz_cli.training.loop import augment_batch, epoch_generator, train_epoch


def _train(images, labels, rows=None):
    torch.manual_seed(0)
    model = Net(ModelConfig(in_channels=3, image_size=8, num_classes=2, channels=(4,), kernel_size=3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    stats = train_epoch(model, optimizer, images, labels, batch_size=4, generator=epoch_generator(0, 1), rows=rows)
    return stats, model.state_dict()


def test_uint8_rows_train_exactly_like_gathered_floats():
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(20) % 2
    rows = torch.tensor([1, 3, 4, 7, 8, 10, 11, 15, 16, 19])
    gathered = pixels[rows].float() / 255
    expected_stats, expected = _train(gathered, labels[rows])
    stats, weights = _train(pixels, labels, rows=rows)
    assert stats == expected_stats
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


def test_augmentation_flips_and_shifts_within_the_padding():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    flipped = augment_batch(x, ("flip",), torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
    shifted = augment_batch(x, ("crop",), torch.Generator().manual_seed(3))
    assert shifted.shape == x.shape
    for i in range(2):
        # every crop is the image moved by (dy, dx) with |dy|, |dx| <= 4 and zeros shifted in
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        assert any(
            torch.equal(shifted[i], padded[:, dy : dy + 6, dx : dx + 6]) for dy in range(9) for dx in range(9)
        )
