"""User architectures (loaded by import path in tests) with modules the layer registry does not know and a matmul in
the forward's own code, so the whole-network report must take their FLOPs from FlopCounterMode."""
from __future__ import annotations

import torch
from torch import nn


class Upsampler(nn.Module):
    """A transposed conv (outside the registry), then a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.fc = nn.Linear(3 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.up(x).flatten(1))


class Recurrent(nn.Module):
    """An LSTM (outside the registry), a linear layer, then a matmul by a parameter of the model itself."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)
        self.mix = nn.Parameter(torch.ones(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1]) @ self.mix


def upsampler() -> nn.Module:
    return Upsampler()


def recurrent() -> nn.Module:
    return Recurrent()


def dropout_mlp(in_features: int = 64, classes: int = 10, hidden: int = 32) -> nn.Module:
    """An MLP with dropout: its masks come from each process's random state (resume under DDP)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.Dropout(0.5), nn.ReLU(),
                         nn.Linear(hidden, classes))


def odd_convs() -> nn.Module:
    """A reflect-padded conv and a grouped one (neither takes a conv2d design), then a plain conv that does."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.Flatten(), nn.Linear(4 * 64, 10))


def batchnorm_mlp(in_features: int = 64, classes: int = 10, hidden: int = 32) -> nn.Module:
    """An MLP with BatchNorm1d: it cannot train on one example (DDP shares of an epoch's last batch)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))
