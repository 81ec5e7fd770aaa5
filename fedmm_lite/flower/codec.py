"""The package's objects as flat name -> tensor dicts, and those as Flower records.

What crosses the process boundary is exactly what crosses the privacy boundary in one process:
- down: the global model (``ServerState.global_``), each client's part of the round's plan
  (``plan.ChunkPlan`` restricted to one client) and the method's downloads (GFMFR's teacher row);
- up: each client's ``server.UploadBatch`` (the update Delta_u = start - end of every shared tensor,
  the reports, the size where the rule needs it, who sent it) and its mean training loss;
- at evaluation: each user's rank of its held-out item (valid and test).

Every field of an ``UploadBatch`` and a ``ChunkPlan`` becomes one named tensor
(``values/Q``, ``rows/Q``, ``owners/Q``, ``reports/p``, ``sizes``, ``clients``); Flower's
``Array`` stores a tensor as NumPy's ``.npy`` bytes, so dtype, shape and every bit come back
unchanged (tested: encode then decode is the identity).

The flat layer is plain torch (no flwr import); ``to_record`` / ``from_record`` turn a flat dict
into a Flower ``ArrayRecord`` and back.
"""
from __future__ import annotations

import numpy as np
import torch

from ..fed.plan import ChunkPlan
from ..fed.server import UploadBatch

UPLOAD_PARTS = ("values", "rows", "owners", "reports")
PLAN_FIELDS = ("clients", "sizes", "items", "labels", "lengths", "rows", "row_owner", "slots", "orders")


# ---------------------------------------------------------------------------------- uploads
def upload_to_tensors(batch: UploadBatch) -> dict:
    """An ``UploadBatch`` as ``{"clients", "sizes"?, "values/NAME", "rows/NAME", "owners/NAME",
    "reports/NAME"}``; ``sizes`` is absent when the rule does not upload them."""
    out = {"clients": batch.clients}
    if batch.sizes is not None:
        out["sizes"] = batch.sizes
    for part in UPLOAD_PARTS:
        for name, value in getattr(batch, part).items():
            out[f"{part}/{name}"] = value
    return out


def tensors_to_upload(tensors: dict) -> UploadBatch:
    """The inverse of ``upload_to_tensors``."""
    clients = tensors["clients"]
    batch = UploadBatch(int(clients.shape[0]), clients, tensors.get("sizes"))
    for key, value in tensors.items():
        part, sep, name = key.partition("/")
        if sep:
            getattr(batch, part)[name] = value
    return batch


def payload_scalars(tensors: dict) -> int:
    """Scalars of the model payload of an upload: its values and reports (not the row indices,
    sizes or ids that say where they go): what ``state.count_parameters`` counts."""
    return sum(int(v.numel()) for k, v in tensors.items() if k.startswith(("values/", "reports/")))


def merge_uploads(batches: list) -> UploadBatch:
    """The uploads of several clients as one ``UploadBatch``, client after client in the given order:
    the batch ``oracle.train_chunk`` returns for a chunk of those clients (item-table rows
    concatenated, their owners shifted to the client's position, modules and reports stacked)."""
    clients = torch.cat([b.clients for b in batches])
    sizes = None if batches[0].sizes is None else torch.cat([b.sizes for b in batches])
    merged = UploadBatch(int(clients.shape[0]), clients, sizes)
    offset = 0
    shifted = []
    for b in batches:
        shifted.append({name: owner + offset for name, owner in b.owners.items()})
        offset += b.n_clients
    for name in batches[0].values:
        merged.values[name] = torch.cat([b.values[name] for b in batches])
    for name in batches[0].rows:
        merged.rows[name] = torch.cat([b.rows[name] for b in batches])
        merged.owners[name] = torch.cat([s[name] for s in shifted])
    for name in batches[0].reports:
        merged.reports[name] = torch.cat([b.reports[name] for b in batches])
    return merged


# ---------------------------------------------------------------------------------- plans
def client_part(plan: ChunkPlan, c: int) -> ChunkPlan:
    """Client ``plan.clients[c]``'s part of a chunk's plan: a one-client ``ChunkPlan`` with its own
    samples, shuffles and item rows (slots renumbered into its rows), cut to its length L_c.

    The oracle reads a client's samples ``items[c, orders[e, c, :L_c]]``; the shuffle puts the
    L_c valid samples first, so the cut keeps every draw the client uses (tested)."""
    L = int(plan.lengths[c])
    mine = plan.row_owner == c                                                   # (Q,)
    first = int(torch.nonzero(mine)[0]) if bool(mine.any()) else 0              # rows grouped by client
    return ChunkPlan(clients=plan.clients[c:c + 1].clone(), sizes=plan.sizes[c:c + 1].clone(),
                     items=plan.items[c:c + 1, :L].clone(), labels=plan.labels[c:c + 1, :L].clone(),
                     lengths=plan.lengths[c:c + 1].clone(), rows=plan.rows[mine].clone(),
                     row_owner=torch.zeros(int(mine.sum()), dtype=torch.long),
                     slots=plan.slots[c:c + 1, :L] - first,
                     orders=plan.orders[:, c:c + 1, :L].clone(), batch_size=plan.batch_size)


def plan_to_tensors(plan: ChunkPlan) -> dict:
    out = {f"plan/{name}": getattr(plan, name) for name in PLAN_FIELDS}
    out["plan/batch_size"] = torch.tensor(plan.batch_size)
    return out


def tensors_to_plan(tensors: dict) -> ChunkPlan:
    return ChunkPlan(**{name: tensors[f"plan/{name}"] for name in PLAN_FIELDS},
                     batch_size=int(tensors["plan/batch_size"]))


def client_downloads(downloads, c: int, n_clients: int):
    """Client ``c``'s row of a chunk's downloads (``method.downloads``): every tensor whose leading
    axis is the chunk's clients is cut to ``[c:c+1]`` (GFMFR: ``clients`` and the teacher ``q``)."""
    if downloads is None:
        return None
    if not isinstance(downloads, dict) or not all(torch.is_tensor(v) for v in downloads.values()):
        raise TypeError("flower: a method's downloads must be None or a dict of tensors with a "
                        "leading client axis")
    return {k: (v[c:c + 1] if v.dim() and v.shape[0] == n_clients else v) for k, v in downloads.items()}


# ---------------------------------------------------------------------------------- records
def to_record(tensors: dict):
    """A flat dict of tensors as a Flower ``ArrayRecord`` (each tensor as ``.npy`` bytes)."""
    from flwr.app import Array, ArrayRecord

    record = ArrayRecord()
    for name, value in tensors.items():
        record[name] = Array(np.ascontiguousarray(value.detach().cpu().numpy()))
    return record


def from_record(record, device="cpu") -> dict:
    """The inverse of ``to_record``: name -> tensor (a copy, on ``device``)."""
    return {name: torch.from_numpy(array.numpy().copy()).to(device) for name, array in record.items()}


def record_bytes(record) -> int:
    """Bytes of an ``ArrayRecord`` as Flower counts them (the ``.npy`` buffers and the keys)."""
    return int(record.count_bytes())
