"""Adam and Nesterov SGD over ensemble parameters (a leading member axis K), with one
learning rate per member. The arithmetic follows ``torch.optim.Adam`` (betas 0.9, 0.999,
eps 1e-8) and ``torch.optim.SGD(momentum=0.9, nesterov=True, dampening=0)`` elementwise, so
member k's update is the one its optimizer would make alone (tested in float64)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

KINDS = ("adam", "sgd_nesterov")


class PackedOptimizer:
    def __init__(self, params: list[Tensor], kind: str, k: int):
        if kind not in KINDS:
            raise ValueError(f"optimizer={kind!r} is not valid; valid choices: {', '.join(KINDS)}")
        self.params, self.kind, self.k = params, kind, k
        self.t = 0
        self.state: list[dict] = [dict() for _ in params]

    def step(self, lr: Tensor) -> None:
        """One update; ``lr`` is ``(K,)``."""
        self.t += 1
        with torch.no_grad():
            for p, st in zip(self.params, self.state):
                if p.grad is None:
                    continue
                g = p.grad
                lr_p = lr.view(-1, *([1] * (p.dim() - 1))).to(p.dtype)
                if self.kind == "adam":
                    b1, b2, eps = 0.9, 0.999, 1e-8
                    if not st:
                        st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    st["m"].lerp_(g, 1 - b1)
                    st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                    bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
                    denom = (st["v"].sqrt() / math.sqrt(bc2)).add_(eps)
                    p.sub_((lr_p / bc1) * st["m"] / denom)
                else:
                    if "buf" not in st:
                        st["buf"] = g.clone()
                    else:
                        st["buf"].mul_(0.9).add_(g)
                    p.sub_(lr_p * g.add(st["buf"], alpha=0.9))

    def state_dict(self) -> dict:
        return {"t": self.t, "state": [{k: v.detach().clone() for k, v in st.items()} for st in self.state]}

    def load_state_dict(self, sd: dict) -> None:
        self.t = sd["t"]
        self.state = [{k: v.to(p.device) for k, v in st.items()} for st, p in zip(sd["state"], self.params)]
