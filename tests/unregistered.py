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
