"""training/loop.py: one epoch on a tiny tensor dataset learns, never prints, reports each batch, repeats exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_images

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.models.network import Net
from cnnviz_cli.training.loop import (
    EpochStats,
    augment_batch,
    epoch_generator,
    evaluate,
    make_optimizer,
    predict_logits,
    train_epoch,
)

N = 120  # 4 batches of 32 (the last one 24 images)


@pytest.fixture(scope="module")
def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = synthetic_images(N, seed=3)
    return torch.from_numpy(images).unsqueeze(1).float().div(255), torch.from_numpy(labels).long()


def fresh(seed: int = 0) -> tuple[Net, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Net(ModelConfig(channels=(4, 8), kernel_size=3))
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def one_epoch(tensors, seed=0, **kwargs) -> tuple[Net, EpochStats | None]:
    model, optimizer = fresh(seed)
    stats = train_epoch(model, optimizer, *tensors, batch_size=32, generator=epoch_generator(seed, 1), **kwargs)
    return model, stats


def test_one_epoch_lowers_the_loss_and_reports_each_batch_without_printing(tensors, capsys):
    model, optimizer = fresh()
    before = evaluate(model, *tensors)
    calls = []
    stats = train_epoch(
        model, optimizer, *tensors, batch_size=32, generator=epoch_generator(0, 1), on_batch=lambda *a: calls.append(a)
    )
    after = evaluate(model, *tensors)
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert after.loss < before.loss and stats.loss < before.loss
    assert 0.0 <= stats.accuracy <= 1.0 and (stats.accuracy * N) == pytest.approx(round(stats.accuracy * N))
    assert capsys.readouterr() == ("", "")
    # The weights are back in the ordinary layout after the channels-last block.
    assert all(p.is_contiguous() for p in model.parameters())


def test_the_same_seed_gives_bit_identical_weights_and_another_seed_does_not(tensors):
    first, stats_a = one_epoch(tensors, seed=5)
    second, stats_b = one_epoch(tensors, seed=5)
    other, _ = one_epoch(tensors, seed=6)
    assert stats_a == stats_b
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert sorted(a) == sorted(b) == sorted(c)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not all(torch.equal(a[name], c[name]) for name in a)


def test_the_shuffling_order_depends_only_on_seed_and_epoch():
    def order(seed, epoch):
        return torch.randperm(50, generator=epoch_generator(seed, epoch))

    assert torch.equal(order(1, 2), order(1, 2))
    assert not torch.equal(order(1, 2), order(1, 3)) and not torch.equal(order(1, 2), order(2, 2))


def test_a_stop_request_ends_the_epoch_between_batches(tensors, capsys):
    calls = []
    model, stats = one_epoch(tensors, on_batch=lambda *a: calls.append(a), should_stop=lambda: len(calls) >= 2)
    assert stats is None and calls == [(1, 4), (2, 4)]
    assert capsys.readouterr() == ("", "")


def test_evaluate_is_the_mean_cross_entropy_and_the_share_right(tensors, capsys):
    images, labels = tensors
    model, _ = fresh(1)
    calls = []
    stats = evaluate(model, images, labels, batch_size=50, on_batch=lambda *a: calls.append(a))
    assert calls == [(1, 3), (2, 3), (3, 3)] and not model.training
    with torch.no_grad():
        logits = model(images)
    assert stats.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert stats.accuracy == (logits.argmax(1) == labels).sum().item() / N
    assert capsys.readouterr() == ("", "")


def test_predict_logits_in_batches_matches_one_pass(tensors):
    images, _ = tensors
    model, _ = fresh(2)
    with torch.no_grad():
        whole = model.eval()(images)
    batched = predict_logits(model, images, batch_size=7)
    assert batched.shape == (N, 10) and torch.allclose(batched, whole, atol=1e-5)
    assert predict_logits(model, images[:0]).shape == (0, 10)  # one empty batch: still 10 class columns


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


def test_plain_cnns_keep_the_default_adam_and_other_networks_get_the_fused_one():
    model, _ = fresh()
    assert not make_optimizer(model, 0.01, plain_cnn=True).defaults["fused"]
    assert make_optimizer(model, 0.01, plain_cnn=False).defaults["fused"] is True


def test_fused_adam_trains_to_the_same_place_as_the_default_within_rounding(tensors):
    """The fused implementation is the same algorithm: after an epoch the weights agree to rounding."""
    weights = []
    for plain_cnn in (True, False):
        model, _ = fresh()
        optimizer = make_optimizer(model, 0.01, plain_cnn=plain_cnn)
        train_epoch(model, optimizer, *tensors, batch_size=32, generator=epoch_generator(0, 1))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-5)
