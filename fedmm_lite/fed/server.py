"""The server side of a round: aggregation rules (book/methods.md, "Backbones") and the method's step.

The server sees ONLY ``UploadBatch`` objects: the shared tensors' round updates of some clients
(Delta_u = start - end of local training, i.e. the learning-rate-scaled sum of all local gradients,
never the last batch's gradient), what a method has its clients report (GFMFR's prediction
functions), and the training-set sizes where the data-size rule needs them. It never sees a user
id, a private tensor or a sample: ``ServerRound`` is built from the server's own state
(``state.ServerState``) and receives uploads, nothing else (the privacy boundary).

With weights a_u over this round's participants P (a_u >= 0, sum_u a_u = 1):

    theta <- theta - eta_s * sum_{u in P} a_u Delta_u

- FedAvg / FedNCF ("data_size"): a_u = n_u / sum_v n_v and eta_s = 1, which is exactly the
  weighted average of the clients' end-of-round copies, sum_u a_u theta_u;
- FCF, PFedRec, FedRAP ("uniform"): a_u = 1 / |P|; FCF applies it with a server step size eta_s.

Central differential privacy (DP-FedAvg, McMahan et al. 2018; privacy.py): the server clips each
client's whole upload to norm S as it arrives, weighs clients uniformly, and at ``close`` adds
N(0, (z S)^2) to every scalar of the sum and divides by the EXPECTED number of participants
beta U (a public constant: the actual count would itself depend on who took part):

    theta <- theta - eta_s * (sum_{u in P} clip_S(Delta_u) + N(0, (z S)^2 I)) / (beta U)

Uploads arrive chunk by chunk, so ``Aggregator`` streams: it keeps sum_u r_u Delta_u and sum_u r_u
for the raw weights r_u (n_u or 1) and divides once at the end; the result equals the weighted sum
with ``aggregation_weights`` (tested on hand-made arrays). Item-table updates come as rows: for
each client the unique item rows it trained on; every other row of its Delta_u is exactly 0 (an
untouched row gets no gradient), so scattering rows with ``index_add`` equals adding full tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .privacy import DpSpec, clip_uploads, gaussian_sum_noise

RULES = ("data_size", "uniform")


@dataclass
class UploadBatch:
    """The uploads of C clients: named shared-tensor updates, reports, and sizes where needed.

    ``values[name]`` is (Q, d) for an item table: Q rows, the rows of client after client, with
    ``rows[name]`` (Q,) their item indices and ``owners[name]`` (Q,) the position (0..C-1) of the
    client each row came from; it is (C, ...) for a small module (no rows entry). ``reports[name]``
    (C, ...) are private tensors the method has clients upload, never averaged. ``sizes`` (C,) are
    the training-set sizes n_u, uploaded only under the data-size rule (None otherwise).
    ``clients`` (C,) says who sent each upload: the server addressed them, so it knows (GFMFR keeps
    a client's group by it); it never learns their data or private state.
    """

    n_clients: int
    clients: torch.Tensor | None = None                    # (C,) who sent each upload
    sizes: torch.Tensor | None = None                      # (C,) n_u, data-size rule only
    values: dict = field(default_factory=dict)             # name -> (Q, d) or (C, ...)
    rows: dict = field(default_factory=dict)               # name -> (Q,) long, item of each row
    owners: dict = field(default_factory=dict)             # name -> (Q,) long, client of each row
    reports: dict = field(default_factory=dict)            # name -> (C, ...), not averaged

    @classmethod
    def for_rule(cls, rule: str, sizes: torch.Tensor, clients: torch.Tensor) -> "UploadBatch":
        """An empty batch of the ``clients`` that carries their sizes only if ``rule`` needs them."""
        return cls(int(sizes.shape[0]), clients.clone(), sizes.clone() if rule == "data_size" else None)


def raw_weights(rule: str, sizes: torch.Tensor | None, n_clients: int | None = None) -> torch.Tensor:
    """Unnormalised weights r_u: n_u for "data_size", 1 for "uniform" (which needs no sizes)."""
    if rule == "data_size":
        if sizes is None:
            raise ValueError("server: the data-size rule needs the clients' training-set sizes")
        return sizes.to(torch.float64)
    if rule == "uniform":
        n = int(sizes.shape[0]) if sizes is not None else n_clients
        return torch.ones(n, dtype=torch.float64)
    raise ValueError(f"server: unknown rule {rule!r}; choose one of {RULES}")


def aggregation_weights(rule: str, sizes: torch.Tensor) -> torch.Tensor:
    """a_u = r_u / sum_v r_v over the participants: non-negative, summing to 1 (FedAvg: n_u / sum n_v)."""
    r = raw_weights(rule, sizes)
    total = r.sum()
    if not total > 0:
        raise ValueError("server: the participants' weights sum to 0 (no training data this round)")
    # a_u = r_u / sum_v r_v
    return r / total


def weighted_update(rule: str, sizes: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """sum_u a_u Delta_u for stacked full updates ``deltas`` (P, ...): the reference form."""
    a = aggregation_weights(rule, sizes).to(deltas.dtype)                     # (P,)
    return torch.einsum("p,p...->...", a, deltas)


def apply_update(params: dict, update: dict, server_lr: float) -> dict:
    """theta <- theta - eta_s * Delta_bar for every shared tensor; returns new tensors."""
    return {name: params[name] - server_lr * update[name] for name in params}


class Aggregator:
    """Streams upload batches into sum_u r_u Delta_u; ``mean_update`` divides by sum_u r_u."""

    def __init__(self, rule: str, shapes: dict, dtype: torch.dtype, device):
        raw_weights(rule, torch.zeros(1))                  # validates the rule name
        self.rule = rule
        self.buffers = {k: torch.zeros(s, dtype=dtype, device=device) for k, s in shapes.items()}
        self.total = 0.0
        self.clients = 0

    def add(self, batch: UploadBatch) -> None:
        r = raw_weights(self.rule, batch.sizes, batch.n_clients).to(
            device=next(iter(self.buffers.values())).device)
        self.total += float(r.sum())
        self.clients += batch.n_clients
        for name, value in batch.values.items():
            buf = self.buffers[name]
            if name in batch.rows:
                rw = r.to(value.dtype)[batch.owners[name]].unsqueeze(1)         # (Q, 1)
                # buffer[i] += r_u Delta_u[i] for every row i of every client u
                # (index_put_ with accumulate: deterministic on CUDA too, unlike index_add_)
                buf.index_put_((batch.rows[name],), (rw * value).to(buf.dtype), accumulate=True)
            else:
                # buffer += sum_u r_u Delta_u, as one product: no (C, ...) temporary
                buf += torch.tensordot(r.to(value.dtype), value, dims=1).to(buf.dtype)

    def mean_update(self) -> dict:
        """sum_u a_u Delta_u = (sum_u r_u Delta_u) / (sum_u r_u)."""
        if not self.total > 0:
            raise ValueError("server: no upload with a positive weight this round")
        return {k: v / self.total for k, v in self.buffers.items()}


class ServerRound:
    """The server's side of one round: receive the (privatised) uploads chunk by chunk, then
    ``close``: theta <- theta - eta_s * sum_u a_u Delta_u with the backbone's rule, then the
    method's server step. Built from ``ServerState`` only: no client state is within reach.

    Uploads are aggregated as they arrive (a round's uploads are never all held at once) unless
    the method's server step needs them (``keep_uploads``: GFMFR groups its clients by them)."""

    def __init__(self, server, method, rule: str, config, t: int, keep_uploads: bool = False,
                 dp: DpSpec | None = None, generator: torch.Generator | None = None,
                 expected_clients: float | None = None, tables=()):
        self.server, self.method, self.config, self.t = server, method, config, t
        # central DP (module docstring): uniform weights, the server's own clipping and noise
        self.central = dp is not None and dp.mode == "central"
        if self.central and not (expected_clients and expected_clients > 0 and generator is not None):
            raise ValueError("server: central DP needs the expected number of participants and a generator")
        self.dp, self.generator, self.expected, self.tables = dp, generator, expected_clients, tables
        shapes = {k: tuple(v.shape) for k, v in server.global_.items()}
        value = next(iter(server.global_.values()))
        self.aggregator = Aggregator("uniform" if self.central else rule, shapes, value.dtype, value.device)
        self.kept = [] if keep_uploads else None

    def receive(self, batch: UploadBatch) -> None:
        if self.central:
            clip_uploads(batch, self.dp.clip, self.tables)     # clip_S(Delta_u), client by client
        self.aggregator.add(batch)
        if self.kept is not None:
            self.kept.append(batch)

    def close(self) -> dict:
        """Apply the averaged update and the method's server step; returns its diagnostics.
        A round without participants (possible under Poisson sampling) leaves the model as it is,
        except under central DP, where the noise is released all the same."""
        _, _, server_lr = self.config.step_sizes()
        start = self.server.global_                        # the model the clients received
        if self.central:
            sums = self.aggregator.buffers
            gaussian_sum_noise(sums, self.dp.std, self.generator)
            # (sum_u clip_S(Delta_u) + N(0, (z S)^2)) / (beta U)
            update = {k: v / self.expected for k, v in sums.items()}
        elif self.aggregator.clients == 0:
            return {}
        else:
            update = self.aggregator.mean_update()
        self.server.global_ = apply_update(start, update, server_lr)
        return self.method.server_step(self.server, self.kept or [], start, self.config, self.t)
