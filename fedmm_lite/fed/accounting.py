"""Privacy accounting: (epsilon, delta) of the rounds actually run, from Google's ``dp-accounting``
library (its Renyi-DP accountant), never from a hand-written formula.

Why this library: pure Python (numpy, scipy), no second torch; it states each mechanism as a
``DpEvent`` so the accounted mechanism is written down; its RDP accountant is the standard one
for the Poisson-sampled Gaussian (Mironov 2017; Mironov, Talwar, Zhang 2019). Pinned:
requirements.txt.

The protected unit is ONE USER'S WHOLE CONTRIBUTION: everything a client uploads in a round
(every shared update and report together, clipped as one vector), over every round it takes part
in. Two settings (privacy.py):

- central (DP-FedAvg): neighbouring datasets differ by adding or removing one user. A round is
  the sum of clipped uploads (sensitivity S) plus N(0, (z S)^2), on a Poisson sample of rate beta:
  ``PoissonSampledDpEvent(beta, GaussianDpEvent(z))``, composed over the rounds run. Who sees the
  guarantee: anyone who reads the global models (the clients, the public); the server itself is
  trusted with the clipped uploads.
- local: neighbouring inputs are two arbitrary datasets of one user, whose clipped uploads differ
  by at most 2 S in L2 norm; the noise std is z S, so each upload is ``GaussianDpEvent(z / 2)``,
  composed over the rounds the user took part in (the server knows who it addressed: sampling
  gives no amplification). Who sees the guarantee: the server too.

Epsilon of the papers' unclipped noise is unbounded; ``papers_epsilon`` gives what their noise
would buy IF every upload were clipped at a measured norm (the chapter's table).
"""
from __future__ import annotations

import contextlib
import logging
import math

from ..errors import OptionError

ACCOUNTANT = "dp-accounting RdpAccountant (Renyi DP; default orders)"
PROTECTED_UNIT = ("one user's whole contribution: every upload of every round it takes part in "
                  "(all shared updates and reports, clipped together as one vector)")
NEIGHBOURS = {"central": "add or remove one user (the server is trusted)",
              "local": "replace one user's data by any other (the server is not trusted)"}


def _library():
    try:
        import dp_accounting
    except ImportError:
        raise OptionError("--dp: needs the dp-accounting package (pip install dp-accounting==0.6.0)") from None
    return dp_accounting


@contextlib.contextmanager
def _quiet():
    """The RDP accountant logs a warning for each fractional order whose series does not converge
    and leaves that order out: a looser, still valid bound. Those lines are silenced here."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def round_event(mode: str, noise_multiplier: float, sample_ratio: float):
    """The ``DpEvent`` of one round for one user (module docstring)."""
    dpa = _library()
    if mode == "central":
        gaussian = dpa.GaussianDpEvent(noise_multiplier)
        return gaussian if sample_ratio >= 1 else dpa.PoissonSampledDpEvent(sample_ratio, gaussian)
    if mode == "local":
        # two clipped uploads differ by at most 2 S; noise std z S: multiplier z S / (2 S)
        return dpa.GaussianDpEvent(noise_multiplier / 2)
    raise ValueError(f"accounting: unknown DP mode {mode!r}")


def epsilon(mode: str, noise_multiplier: float, sample_ratio: float, rounds: int, delta: float) -> float:
    """epsilon at ``delta`` after ``rounds`` rounds (central: rounds run; local: rounds the user
    took part in). 0 rounds spend nothing."""
    rounds = int(rounds)                 # the library wants a Python int (not numpy's)
    if rounds <= 0:
        return 0.0
    dpa = _library()
    accountant = dpa.rdp.RdpAccountant()
    with _quiet():
        accountant.compose(dpa.SelfComposedDpEvent(round_event(mode, noise_multiplier, sample_ratio), rounds))
        return float(accountant.get_epsilon(delta))


class Accountant:
    """The run's accountant: ``spend(participations)`` after each round, ``epsilon`` so far, and
    whether one more round would pass the target (``allows_another``).

    Central: every round counts (each user may have been sampled). Local: the epsilon of the user
    who took part most often (``participations``: the largest count so far)."""

    def __init__(self, dp, sample_ratio: float):
        self.dp, self.sample_ratio = dp, sample_ratio
        self.rounds = 0                 # central: rounds run; local: the most rounds one user took part in
        self.history = []               # epsilon after each round

    def epsilon_after(self, rounds: int) -> float:
        return epsilon(self.dp.mode, self.dp.noise_multiplier, self.sample_ratio, rounds, self.dp.delta)

    @property
    def epsilon(self) -> float:
        return self.history[-1] if self.history else 0.0

    def allows_another(self) -> bool:
        """False when the next round could take epsilon past ``target_epsilon``."""
        target = self.dp.target_epsilon
        return target is None or self.epsilon_after(self.rounds + 1) <= target

    def spend(self, max_participations: int | None = None) -> float:
        self.rounds = self.rounds + 1 if self.dp.mode == "central" else int(max_participations)
        self.history.append(self.epsilon_after(self.rounds))
        return self.history[-1]

    def summary(self) -> dict:
        return {"dp": self.dp.mode, "clip": self.dp.clip, "noise_multiplier": self.dp.noise_multiplier,
                "noise_std": self.dp.std, "delta": self.dp.delta, "sample_ratio": self.sample_ratio,
                "target_epsilon": self.dp.target_epsilon, "epsilon": self.epsilon,
                "epsilon_per_round": list(self.history), "accountant": ACCOUNTANT,
                "protected_unit": PROTECTED_UNIT, "neighbouring": NEIGHBOURS[self.dp.mode]}


def papers_epsilon(kind: str, scale: float, norm: float, rounds: int, delta: float) -> float:
    """What the papers' per-scalar noise of ``scale`` would give as LOCAL DP if every upload were
    clipped at ``norm`` (its L1 norm for Laplace, L2 for Gaussian): two uploads then differ by at
    most 2 norm. Laplace: ``LaplaceDpEvent(b / (2 norm))`` (pure epsilon per round, composed);
    Gaussian: ``GaussianDpEvent(std / (2 norm))``. Without clipping the answer is infinite."""
    rounds = int(rounds)
    if not math.isfinite(norm) or rounds <= 0:
        return math.inf if rounds > 0 else 0.0
    dpa = _library()
    if kind == "laplace":
        event = dpa.LaplaceDpEvent(scale / (2 * norm))
    elif kind == "gaussian":
        event = dpa.GaussianDpEvent(scale / (2 * norm))
    else:
        raise ValueError(f"accounting: unknown noise kind {kind!r}")
    accountant = dpa.rdp.RdpAccountant()
    with _quiet():
        accountant.compose(dpa.SelfComposedDpEvent(event, rounds))
        return float(accountant.get_epsilon(delta))
