"""Networks the tests build through `python:factories:NAME` specs (the user's own code, as cnnviz sees it)."""

from __future__ import annotations

from torch import nn


class TwoPath(nn.Module):
    """A small network with a residual sum and a concatenation, for graph receptive fields."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.left = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.right = nn.Conv2d(8, 8, 1)
        self.merge = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, num_classes))

    def forward(self, x):
        import torch

        x = self.pool(self.act(self.stem(x)))
        x = torch.cat([self.left(x) + x, self.right(x)], dim=1)
        return self.head(self.merge(x))


def two_path(num_classes: int, in_channels: int) -> nn.Module:
    return TwoPath(num_classes=num_classes, in_channels=in_channels)


def no_keywords(classes):
    return TwoPath(classes)


def not_a_module(num_classes: int, in_channels: int):
    return "a string"


class RefusesToTrain(TwoPath):
    """Fine in eval mode (cnnviz's probe passes), fails on the first training batch: a bug in the user's code."""

    def forward(self, x):
        if self.training:
            raise ValueError("this network refuses to train\nsecond line")
        return super().forward(x)


def refuses_to_train(num_classes: int, in_channels: int) -> nn.Module:
    return RefusesToTrain(num_classes=num_classes, in_channels=in_channels)
