"""The log-SNR schedule gamma(t) of Variational Diffusion Models (Kingma et al. 2021, sec. 3.2, app. H).

sigma_t^2 = sigmoid(gamma(t)), alpha_t^2 = sigmoid(-gamma(t)), SNR(t) = exp(-gamma(t)) on t in [0, 1].
Three variants behind one call, each monotone increasing for any parameters:

- ``fixed``: gamma(t) = gamma_min + (gamma_max - gamma_min) t, nothing learned;
- ``scalar``: the same line with learned endpoints gamma_0, gamma_1;
- ``network``: learned endpoints and a learned monotone shape between them,
  gamma(t) = gamma_0 + (gamma_1 - gamma_0) * s(t), with s(0) = 0, s(1) = 1.

``gamma_and_derivative`` returns gamma(t) and gamma'(t) (the weight of the continuous-time loss).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

GammaKind = Literal["fixed", "scalar", "network"]


class Gamma(nn.Module):
    """gamma(t) = gamma_0 + (gamma_1 - gamma_0) * shape(t); subclasses choose what is learned."""

    def __init__(self, gamma_min: float, gamma_max: float, learn_endpoints: bool):
        super().__init__()
        if not gamma_min < gamma_max:
            raise ValueError(f"gamma_min ({gamma_min}) must be below gamma_max ({gamma_max})")
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        start = torch.tensor(float(gamma_min))
        # gamma_1 - gamma_0 = softplus(raw_width) > 0 keeps gamma increasing whatever the parameters.
        raw_width = torch.tensor(float(gamma_max - gamma_min)).expm1().log()
        if learn_endpoints:
            self.gamma_0_param = nn.Parameter(start)
            self.raw_width = nn.Parameter(raw_width)
        else:
            self.register_buffer("gamma_0_param", start)
            self.register_buffer("raw_width", raw_width)

    @property
    def gamma_0(self) -> Tensor:
        return self.gamma_0_param

    @property
    def gamma_1(self) -> Tensor:
        return self.gamma_0_param + F.softplus(self.raw_width)

    def shape(self, t: Tensor, derivative: bool = True) -> tuple[Tensor, Tensor | None]:
        """s(t) and s'(t) (None unless asked for): the linear shape."""
        return t, torch.ones_like(t) if derivative else None

    def interior_parameters(self) -> list[nn.Parameter]:
        """Parameters of the shape between the endpoints (trained to lower the loss variance)."""
        return []

    def gamma_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(gamma(t), gamma'(t), s(t), s'(t)) for t [B] in [0, 1]."""
        s, ds = self.shape(t)
        width = self.gamma_1 - self.gamma_0
        return self.gamma_0 + width * s, width * ds, s, ds

    def forward(self, t: Tensor) -> Tensor:
        s, _ = self.shape(t, derivative=False)
        return self.gamma_0 + (self.gamma_1 - self.gamma_0) * s


class MonotoneShape(nn.Module):
    """h(t) = w1 t + w3 . sigmoid(W2 t + b2) with non-negative weights (app. H), so h is increasing."""

    def __init__(self, features: int = 1024):
        super().__init__()
        self.w1 = nn.Parameter(torch.ones(()))
        self.w2 = nn.Parameter(torch.randn(features) * 0.5)
        self.b2 = nn.Parameter(torch.zeros(features))
        self.w3 = nn.Parameter(torch.full((features,), 1.0 / features))

    def forward(self, t: Tensor) -> Tensor:
        pre = (2 * t - 1)[:, None] * self.w2.abs()[None] + self.b2[None]
        return self.w1.abs() * t + (torch.sigmoid(pre) * self.w3.abs()[None]).sum(dim=1)


class NetworkGamma(Gamma):
    def __init__(self, gamma_min: float, gamma_max: float, features: int = 1024):
        super().__init__(gamma_min, gamma_max, learn_endpoints=True)
        self.net = MonotoneShape(features)

    def interior_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def _normalised(self, t: Tensor) -> Tensor:
        ends = self.net(torch.tensor([0.0, 1.0], device=t.device, dtype=t.dtype))
        return (self.net(t) - ends[0]) / (ends[1] - ends[0])

    def shape(self, t: Tensor, derivative: bool = True) -> tuple[Tensor, Tensor | None]:
        """s(t) = (h(t) - h(0)) / (h(1) - h(0)) and s'(t) by autograd (kept in the graph when training)."""
        if not derivative:
            return self._normalised(t), None
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            tt = t.detach().requires_grad_(True)
            s = self._normalised(tt)
            (ds,) = torch.autograd.grad(s.sum(), tt, create_graph=keep_graph)
        return (s, ds) if keep_graph else (s.detach(), ds.detach())


def make_gamma(kind: GammaKind, gamma_min: float, gamma_max: float) -> Gamma:
    if kind == "fixed":
        return Gamma(gamma_min, gamma_max, learn_endpoints=False)
    if kind == "scalar":
        return Gamma(gamma_min, gamma_max, learn_endpoints=True)
    if kind == "network":
        return NetworkGamma(gamma_min, gamma_max)
    raise ValueError(f"unknown gamma schedule '{kind}'; known: fixed, scalar, network")
