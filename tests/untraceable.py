"""A user model with data-dependent control flow (torch.fx cannot trace it): the whole-network export refuses it."""
from torch import nn


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.fc(x)
        return y if bool(x.sum() > 0) else -y


def make() -> nn.Module:
    return Untraceable()
