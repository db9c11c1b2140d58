"""User models by import path for the hostile-input tests: module names taken from the network file's options (so
from data), a factory that raises, and a forward that raises."""
from torch import nn


class Named(nn.Module):
    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({name: nn.Linear(8, 8) for name in names})

    def forward(self, x):
        for layer in self.layers.values():
            x = layer(x)
        return x


class Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        raise KeyError("no such feature")


def make(names: list[str]) -> nn.Module:
    return Named(names)


def make_raising_forward() -> nn.Module:
    return Raises()


def make_raising_factory() -> nn.Module:
    raise RuntimeError("the factory failed")
