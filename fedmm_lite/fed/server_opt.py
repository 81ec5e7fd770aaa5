"""Server optimisers of the FedOpt family for a set of global tensors (FedMR's fusion modules).

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), treat the round's averaged update
Delta_bar = sum_u a_u Delta_u (Delta_u = start - end of local training, server.py) as a
pseudo-gradient and step the global model with a server optimiser:

    sgd       theta <- theta - eta_s Delta_bar                                   (plain FedAvg)
    momentum  m <- beta_1 m + Delta_bar;   theta <- theta - eta m                 (FedAvgM)
    adam      m <- beta_1 m + (1 - beta_1) Delta_bar
              v <- beta_2 v + (1 - beta_2) Delta_bar^2                            (FedAdam)
              theta <- theta - eta m / (sqrt(v) + tau)

FedAdam's per-coordinate scaling makes a module move by about eta per round whatever the size of
its clients' updates: a module whose averaged update is tiny (FedMR's mapping layers next to an
item table stepped with item_lr of the order of n) still learns. The published FedMR code also
stepped its fusion module with a server-side Adam. The state (m, v) lives on the server only.

tau: Reddi et al. tune it in 1e-7..1e-1; it must sit below the updates' own scale to adapt. FedMR's
mapping layers move by about 1e-6 per coordinate per round under plain averaging (world-full), so
tau = 1e-3 turned Adam into a scaled-down SGD there; the default here is 1e-8.
"""
from __future__ import annotations

import torch

OPTIMISERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"momentum": 1.0, "adam": 0.003}


def init_state(optimiser: str, tensors: dict) -> dict:
    """Server-only state for ``tensors`` (name -> tensor): ``m_<name>`` (and ``v_<name>`` for
    Adam), zeros; none for sgd."""
    if optimiser not in OPTIMISERS:
        raise ValueError(f"server optimiser {optimiser!r}: choose one of {', '.join(OPTIMISERS)}")
    state = {}
    if optimiser != "sgd":
        for name, value in tensors.items():
            state[f"m_{name}"] = torch.zeros_like(value)
            if optimiser == "adam":
                state[f"v_{name}"] = torch.zeros_like(value)
    return state


@torch.no_grad()
def step(optimiser: str, start: dict, mean_update: dict, state: dict, lr: float,
         beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-8) -> dict:
    """New values of the tensors of ``mean_update`` (name -> Delta_bar), from ``start`` (the
    model the clients received); ``state`` (``init_state``) is updated in place."""
    out = {}
    for name, delta in mean_update.items():
        if optimiser == "sgd":
            # theta <- theta - eta_s Delta_bar
            out[name] = start[name] - lr * delta
            continue
        m = state[f"m_{name}"]
        if optimiser == "momentum":
            # m <- beta_1 m + Delta_bar;  theta <- theta - eta m
            m.mul_(beta1).add_(delta)
            out[name] = start[name] - lr * m
        else:
            v = state[f"v_{name}"]
            # m <- beta_1 m + (1 - beta_1) Delta_bar;  v <- beta_2 v + (1 - beta_2) Delta_bar^2
            m.mul_(beta1).add_(delta, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(delta, delta, value=1 - beta2)
            # theta <- theta - eta m / (sqrt(v) + tau)
            out[name] = start[name] - lr * m / (v.sqrt() + tau)
    return out
