"""Tensorize an existing model: swap its nn.Linear layers for tensor-network layers.

1. train an ordinary PyTorch MLP on the 8x8 digits (ships with scikit-learn, so nothing is downloaded),
2. replace its two hidden layers by TN designs with ``engine.tensorize.tensorize``: the MPO layer is fitted to the
   trained weight by TT-SVD, the nonlinear TTN generator by gradient descent on the weight error,
3. compare parameters, weight error and test accuracy before and after, then fine-tune the tensorized model
   briefly to win back what the approximation lost.

Run:  .venv/bin/python examples/tensorize_model.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from torch import nn  # noqa: E402

from engine.train.data import load_dataset  # noqa: E402
from engine.design.templates import make_template  # noqa: E402
from engine.nn.tensorize import tensorize  # noqa: E402


def train(model: nn.Module, data, epochs: int, lr: float = 3e-3, seed: int = 0) -> None:
    """A plain PyTorch training loop (Adam, cross-entropy, batches of 64)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data.x_train.flatten(1), data.y_train
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, data) -> float:
    model.eval()
    return float((model(data.x_test.flatten(1)).argmax(1) == data.y_test).float().mean())


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="tensorize the hidden layers of a trained MLP")
    p.add_argument("--quick", action="store_true", help="fewer epochs and fitting steps (smoke test)")
    args = p.parse_args(argv)
    epochs, fit_steps, tune_epochs = (3, 40, 1) if args.quick else (20, 300, 5)
    torch.manual_seed(0)

    # 1. Any model will do; here a 64 -> 256 -> 256 -> 10 MLP with named layers.
    data = load_dataset("digits")
    model = nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(64, 256)), ("act1", nn.ReLU()),
        ("fc2", nn.Linear(256, 256)), ("act2", nn.ReLU()),
        ("head", nn.Linear(256, 10)),
    ]))
    train(model, data, epochs)
    before_params, before_acc = n_params(model), accuracy(model, data)
    print(f"dense model: {before_params:,} parameters, test accuracy {before_acc:.3f}")

    # 2. One design per layer to replace, by module name. Legs: 64 = 4x4x4, 256 = 4x8x8 = 4x4x4x4.
    designs = {
        "fc1": make_template("ttn", 64, 256, bond=8, activation="gelu", in_factors=[4, 4, 4], out_factors=[4, 8, 8]),
        "fc2": make_template("mpo", 256, 256, bond=8, in_factors=[4, 4, 4, 4], out_factors=[4, 4, 4, 4]),
    }
    report = tensorize(model, designs, steps=fit_steps)  # in place; MPO -> TT-SVD, TTN -> fitted with Adam

    print(f"\n{'layer':<6} {'design':<32} {'params before':>13} {'after':>7} {'method':>7} {'rel. error':>10}")
    for name, row in report.items():
        print(f"{name:<6} {designs[name].name:<32} {row['params_before']:>13,} {row['params_after']:>7,} "
              f"{row['method']:>7} {row['relative_error']:>10.3f}")

    # The weight errors are large: a trained dense layer is mostly its random initialisation, which has no
    # low-rank tensor structure, so a 28x smaller MPO cannot reproduce it. What matters is the function the whole
    # network computes, and a few epochs of fine-tuning recover most of the accuracy.

    # 3. The tensorized model is an ordinary nn.Module: evaluate it, then fine-tune it like any other.
    after_acc = accuracy(model, data)
    train(model, data, tune_epochs, lr=1e-3)
    tuned_acc = accuracy(model, data)
    print(f"\ntensorized model: {n_params(model):,} parameters ({before_params / n_params(model):.1f}x fewer), "
          f"test accuracy {after_acc:.3f} right after the swap, {tuned_acc:.3f} after {tune_epochs} "
          f"epoch(s) of fine-tuning (dense: {before_acc:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
