"""The package's clients and server as a Flower app (an optional extra: ``pip install fedmm_lite[flower]``).

Nothing of the federated round is rewritten here: the rooms of ``fed/`` are called across a process
boundary (book/10_flower.ipynb tells the story).

- ``node.py``: one SuperNode, the client side. It hosts a few users (its partition), keeps their
  private tensors between rounds in the node's ``Context.state``, trains each of them with the
  per-client oracle's step (``oracle.train_chunk``), privatises their uploads (``privacy.privatise``)
  and scores its own users at evaluation. No flwr import: it is tested on its own.
- ``server.py``: the server side: the round's plan (``rounds.plan_round`` with the run's generator),
  the method's downloads, ``server.ServerRound`` (the backbone's aggregation rule, then the method's
  ``server_step``: FedMR's global modules, GFMFR's grouping, aggregation module and teacher), the
  evaluation from the ranks the nodes report. No flwr import either.
- ``codec.py``: the package's objects (``UploadBatch``, ``ChunkPlan``, models, a node's state) as
  Flower records, tensor for tensor.
- ``apps.py``: the ``ClientApp`` and ``ServerApp`` (Flower's message API) that carry them.
- ``simulation.py``: ``python -m fedmm_lite flower-sim``: the app in Flower's simulation engine.
- ``deploy.py``: a SuperLink and SuperNodes as separate processes (the deployment recipe).
"""
from __future__ import annotations

from ..errors import OptionError

FLWR_PIN = "1.42.0"      # pyproject.toml's extra: flwr[simulation]==FLWR_PIN
INSTALL_HINT = "pip install 'fedmm_lite[flower]' (or: pip install 'flwr[simulation]==1.42.0')"


def require_flwr(simulation: bool = False) -> None:
    """Raise ``OptionError`` with the install line when flwr (and, for the simulation engine, ray)
    is missing: the main install stays light, Flower is an extra."""
    import importlib.util

    missing = [name for name in (("flwr", "ray") if simulation else ("flwr",))
               if importlib.util.find_spec(name) is None]
    if missing:
        raise OptionError(f"flower: {' and '.join(missing)} not installed; {INSTALL_HINT}")
