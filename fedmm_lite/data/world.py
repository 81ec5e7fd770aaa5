"""The world: an offline, seeded synthetic shop with a planted ground truth.

Every item has latent attributes. Some are visible only in its picture (colour, shape, pattern),
some only in its title (category, brand), one in both (style: background of the picture, adjective
in the title), and one in neither (a co-consumption cluster, seen only through who buys what).
Users belong to planted groups whose taste depends on one modality: a visual group (image-only
attributes), a textual group (title-only attributes) and a co-consumption group (clusters, which
content cannot reveal). A user u with n_u interactions draws n_u distinct items, one after the
other, each with probability

    P(i | u) ∝ pop_i^gamma * exp(beta * affinity(u, i))          (without replacement)
    affinity(u, i) = sum_a w_{g(u),a} * pref_{u,a}[v_a(i)]

where pop_i = rank_i^(-1) (Zipf over a random order of the items), v_a(i) is item i's value of attribute a,
w_{g,a} the weight group g puts on attribute a (zero outside its modality), and pref_{u,a} scores
the values of a: 1 for the user's favourite value, ``liked_score`` for the group's other preferred
values, 0 otherwise, plus personal noise. Activity n_u is long-tailed (5 + a Lomax draw, capped).
Timestamps are a random order of the drawn items, so the newest items (the leave-one-out
held-out items) follow the same taste as the training items.

``ensure_world(preset, seed)`` generates a preset once into ``data_home()`` (atomically) and reuses
it while it is intact; ``generate_world`` writes the dataset folder format (README.md),
``ground_truth.json`` and, last, ``manifest.json``: the sha256 of every file it wrote. A world whose
files no longer match their manifest (truncated, edited, missing) is regenerated: it is a pure
function of the preset and the seed.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import data_home
from ..errors import DatasetError, OptionError
from . import world_render as render

GENERATOR_VERSION = "1"
MANIFEST = "manifest.json"  # {"generator_version", "files": {relative path: sha256}}

# Modality of every attribute ('id' = visible in no content, only in co-consumption).
ATTRIBUTE_MODALITY = {
    "colour": "image", "shape": "image", "pattern": "image",
    "category": "text", "brand": "text",
    "style": "both",
    "cluster": "id",
}
# w_{g,a}: weight a group of each taste modality puts on each attribute (absent = 0).
TASTE_WEIGHTS = {
    "image": {"colour": 1.0, "shape": 1.0, "pattern": 0.5, "style": 0.5},
    "text": {"category": 1.0, "brand": 1.0, "style": 0.5},
    "id": {"cluster": 2.0},
}
# How many values of each attribute a group prefers (its "taste"), out of all values.
GROUP_PREFERRED = {"colour": 2, "shape": 2, "pattern": 1, "style": 1, "category": 2, "brand": 3,
                   "cluster": 2}
GROUP_NAMES = {"image": "visual", "text": "textual", "id": "co-consumption"}


@dataclass(frozen=True)
class WorldConfig:
    """Size and behaviour of a generated world. Defaults are the 'full' preset (for the book)."""

    n_users: int = 1200
    n_items: int = 900
    n_clusters: int = 10                  # co-consumption clusters (the ID-only attribute)
    group_modalities: tuple[str, ...] = ("image", "text", "id")  # one planted group per entry
    min_interactions: int = 5             # every user has at least this many interactions
    max_interactions: int = 300           # cap of the long tail of activity (also <= n_items / 3)
    activity_scale: float = 6.0           # Lomax scale: mean extra interactions = scale / (shape - 1)
    activity_shape: float = 1.5           # Lomax shape: smaller = heavier tail of very active users
    popularity_exponent: float = 0.8      # gamma: weight of the Zipf popularity pop_i = rank_i^-1
    beta: float = 2.5                     # strength of taste: exp(beta * affinity)
    liked_score: float = 0.5              # pref of the group's preferred values that are not the favourite
    taste_noise: float = 0.25             # std of each user's personal noise on every value's pref
    missing_title_fraction: float = 0.015  # titles left empty (exercise the imputation path)
    missing_image_fraction: float = 0.015  # images not written (exercise the imputation path)
    image_size: int = 64                  # pictures are image_size x image_size RGB PNGs


WORLD_PRESETS: dict[str, WorldConfig] = {
    # Tests and quick mode: generates in well under a second.
    "quick": WorldConfig(n_users=180, n_items=140, n_clusters=6, activity_scale=3.0),
    # The book's default world.
    "full": WorldConfig(),
    # Office_Products scale (GFMFR: 6,338 users, 4,461 items, 97,227 interactions), for benchmarks.
    "large": WorldConfig(n_users=6300, n_items=4500, n_clusters=16),
}


@dataclass
class World:
    """A sampled world before rendering: all arrays use user index 0..U-1 and item index 0..n-1."""

    config: WorldConfig
    attribute_values: dict[str, tuple[str, ...]]
    item_attributes: dict[str, np.ndarray]          # {attr: (n,) int value index}
    popularity_rank: np.ndarray                     # (n,) int, 0 = most popular
    user_group: np.ndarray                          # (U,) int
    group_preferred: list[dict[str, list[int]]]     # per group: {attr: preferred value indices}
    user_favourite: list[dict[str, int]]            # per user: {attr: favourite value index}
    users: np.ndarray                               # (nnz,) int, sorted by user then time
    items: np.ndarray                               # (nnz,) int
    timestamps: np.ndarray                          # (nnz,) int seconds, increasing per user
    missing_title: np.ndarray                       # (n,) bool
    missing_image: np.ndarray                       # (n,) bool


def _attribute_values(config: WorldConfig) -> dict[str, tuple[str, ...]]:
    return {
        "colour": render.COLOURS, "shape": render.SHAPES, "pattern": render.PATTERNS,
        "category": render.CATEGORIES, "brand": render.BRANDS, "style": render.STYLES,
        "cluster": tuple(f"cluster-{k}" for k in range(config.n_clusters)),
    }


def _activity(config: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: min + floor(Lomax(scale, shape)), capped. Shape (U,)."""
    cap = max(config.min_interactions, min(config.max_interactions, config.n_items // 3))
    uniform = rng.random(config.n_users)
    # Lomax by inversion: x = scale * (u^(-1/shape) - 1)
    extra = config.activity_scale * (uniform ** (-1.0 / config.activity_shape) - 1.0)
    return np.minimum(config.min_interactions + np.floor(extra).astype(np.int64), cap)


def _preferences(config: WorldConfig, values: dict, user_group: np.ndarray,
                 rng: np.random.Generator):
    """Group tastes, user favourites and pref_{u,a} matrices (weights w_{g,a} folded in)."""
    n_users = config.n_users
    group_preferred = []
    for modality in config.group_modalities:
        taste = {}
        for attr in sorted(TASTE_WEIGHTS[modality]):
            k = min(GROUP_PREFERRED[attr], len(values[attr]))
            taste[attr] = sorted(int(v) for v in rng.choice(len(values[attr]), size=k, replace=False))
        group_preferred.append(taste)

    weighted_pref = {a: np.zeros((n_users, len(values[a])), dtype=np.float32)     # (U, V_a)
                     for a in sorted(values)}
    user_favourite = []
    for u in range(n_users):
        g = int(user_group[u])
        weights = TASTE_WEIGHTS[config.group_modalities[g]]
        favourite = {}
        for attr in sorted(weights):
            liked = group_preferred[g][attr]
            fav = liked[int(rng.integers(len(liked)))]
            pref = rng.normal(0.0, config.taste_noise, size=len(values[attr]))
            pref[liked] += config.liked_score
            pref[fav] += 1.0 - config.liked_score
            weighted_pref[attr][u] = weights[attr] * pref
            favourite[attr] = fav
        user_favourite.append(favourite)
    return group_preferred, user_favourite, weighted_pref


@dataclass
class Taste:
    """The part of a world that decides what users choose (drawn before activity and interactions):
    item attributes, popularity, groups and each user's weighted preferences."""

    values: dict[str, tuple[str, ...]]
    item_attributes: dict[str, np.ndarray]          # {attr: (n,) value index}
    popularity_rank: np.ndarray                     # (n,)
    user_group: np.ndarray                          # (U,)
    group_preferred: list
    user_favourite: list
    weighted_pref: dict[str, np.ndarray]            # {attr: (U, V_a)} w_{g(u),a} * pref_{u,a}


def _taste(config: WorldConfig, rng: np.random.Generator) -> Taste:
    """Draw the ``Taste`` from ``rng`` (the first draws of ``simulate_world``, in its order)."""
    if not config.group_modalities or any(m not in TASTE_WEIGHTS for m in config.group_modalities):
        raise OptionError(f"WorldConfig.group_modalities={config.group_modalities!r}: "
                          f"each must be one of {sorted(TASTE_WEIGHTS)}")
    n_users, n_items = config.n_users, config.n_items
    if n_items < 3 * config.min_interactions or n_users < 1:
        raise OptionError(f"WorldConfig: n_items={n_items} must be >= 3 * min_interactions "
                          f"and n_users={n_users} >= 1")
    values = _attribute_values(config)
    item_attributes = {a: rng.integers(len(values[a]), size=n_items) for a in sorted(values)}
    popularity_rank = rng.permutation(n_items)
    user_group = rng.integers(len(config.group_modalities), size=n_users)
    group_preferred, user_favourite, weighted_pref = _preferences(config, values, user_group, rng)
    return Taste(values, item_attributes, popularity_rank, user_group, group_preferred,
                 user_favourite, weighted_pref)


def _logits(config: WorldConfig, taste: Taste, users: slice, attributes=None) -> np.ndarray:
    """The world's choice logits (c, n) of ``users``: gamma log pop_i + beta affinity(u, i)
    (module docstring), the affinity summed over ``attributes`` (None: all of them)."""
    # gamma * log pop_i with pop_i = (rank_i + 1)^-1                          # (n,)
    log_pop = (-config.popularity_exponent * np.log1p(taste.popularity_rank)).astype(np.float32)
    names = sorted(taste.values) if attributes is None else sorted(attributes)
    # affinity(u, i) = sum_a w_{g(u),a} * pref_{u,a}[v_a(i)]                   # (c, n)
    affinity = sum((taste.weighted_pref[a][users][:, taste.item_attributes[a]] for a in names),
                   np.zeros((len(taste.user_group[users]), len(log_pop)), dtype=np.float32))
    return log_pop[None, :] + np.float32(config.beta) * affinity


def simulate_world(config: WorldConfig, rng: np.random.Generator) -> World:
    """Sample attributes, groups, tastes and interactions (no rendering). See the module docstring."""
    n_users, n_items = config.n_users, config.n_items
    taste = _taste(config, rng)
    values, item_attributes, popularity_rank = taste.values, taste.item_attributes, taste.popularity_rank
    user_group, group_preferred, user_favourite = taste.user_group, taste.group_preferred, taste.user_favourite
    activity = _activity(config, rng)

    users, items, stamps = [], [], []
    chunk = 1024
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        logits = _logits(config, taste, slice(start, stop))                     # (c, n)
        # Gumbel top-k = sequential sampling without replacement from softmax(logits);
        # Gumbel noise -log(-log(uniform)), in float32 for speed (u = 0 gives -inf: never chosen)
        with np.errstate(divide="ignore"):
            keys = logits - np.log(-np.log(rng.random(logits.shape, dtype=np.float32)))
        for row, u in enumerate(range(start, stop)):
            k = int(activity[u])
            chosen = np.argpartition(-keys[row], k - 1)[:k]
            chosen = chosen[rng.permutation(k)]          # a random time order of the chosen items
            # strictly increasing integer seconds: a random start, then gaps of about 2 days
            start_time = 1_600_000_000 + int(rng.integers(0, 180 * 86400))
            gaps = 1 + np.floor(rng.exponential(2 * 86400, size=k)).astype(np.int64)
            users.append(np.full(k, u, dtype=np.int64))
            items.append(chosen.astype(np.int64))
            stamps.append(start_time + np.cumsum(gaps))

    missing_title = np.zeros(n_items, dtype=bool)
    missing_image = np.zeros(n_items, dtype=bool)
    n_titles = int(round(config.missing_title_fraction * n_items))
    n_images = int(round(config.missing_image_fraction * n_items))
    picked = rng.choice(n_items, size=min(n_items, n_titles + n_images), replace=False)
    missing_title[picked[:n_titles]] = True                # disjoint: never both missing
    missing_image[picked[n_titles:]] = True
    return World(config, values, item_attributes, popularity_rank, user_group, group_preferred,
                 user_favourite, np.concatenate(users), np.concatenate(items),
                 np.concatenate(stamps), missing_title, missing_image)


def true_logits(config: WorldConfig, seed: int, attributes=None) -> np.ndarray:
    """The generator's true choice logits (U, n) of the world of ``config`` and ``seed``, indexed
    by the generator's users and items (``u0..``, ``i0..``): gamma log pop_i + beta affinity(u, i)
    (module docstring). Every item a user chose was drawn, without replacement, with probability
    proportional to exp(logit), so ranking a user's unchosen items by these logits is the Bayes
    ranking of the next choice. ``attributes``: sum the affinity over these only (e.g. the
    attributes content can show, ``visible_attributes``); None: all of them.

    The taste is re-drawn from the seed (the first draws of ``generate_world``); nothing is read
    from the folder."""
    sim_seq, _ = np.random.SeedSequence(seed).spawn(2)
    taste = _taste(config, np.random.default_rng(sim_seq))
    return _logits(config, taste, slice(0, config.n_users), attributes)


def visible_attributes(modalities=("image", "text")) -> tuple:
    """The attributes a picture or a title shows (``ATTRIBUTE_MODALITY``: image, text, both)."""
    return tuple(a for a, m in ATTRIBUTE_MODALITY.items()
                 if m in modalities or (m == "both" and modalities))


def config_of(truth: dict) -> WorldConfig:
    """The ``WorldConfig`` a ground truth records (``ground_truth.json``'s "config")."""
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in truth["config"].items()}
    return WorldConfig(**fields)


def dataset_logits(dataset, attributes=None) -> np.ndarray:
    """``true_logits`` (U, n) of a loaded world ``Dataset``, rows and columns in its own user and
    item order (the loader drops items nobody chose). Raises ``DatasetError`` for a dataset
    without a world's ground truth."""
    truth = getattr(dataset, "ground_truth", None)
    if not truth or "config" not in truth or "seed" not in truth:
        raise DatasetError(f"{getattr(dataset, 'name', 'dataset')}: no world ground truth "
                           f"(true logits exist for generated worlds only)")
    logits = true_logits(config_of(truth), int(truth["seed"]), attributes)
    users = np.array([int(u[1:]) for u in dataset.user_ids])                    # "u0042" -> 42
    items = np.array([int(i[1:]) for i in dataset.item_ids])
    return logits[np.ix_(users, items)]


def _ids(prefix: str, count: int) -> list[str]:
    width = len(str(count - 1))
    return [f"{prefix}{k:0{width}d}" for k in range(count)]


def _description(world: World, preset: str, seed: int) -> str:
    c = world.config
    nnz = len(world.users)
    groups = ", ".join(f"'{_group_names(c)[g]}' ({m}, {int((world.user_group == g).sum())} users)"
                       for g, m in enumerate(c.group_modalities))
    return (
        f"world-{preset} (seed {seed}, generator v{GENERATOR_VERSION}): a synthetic shop of "
        f"{c.n_users} users, {c.n_items} items and {nnz} interactions "
        f"(sparsity {100 * (1 - nnz / (c.n_users * c.n_items)):.2f}%). Items carry latent "
        "attributes: colour, shape and pattern are visible only in the picture; category and brand "
        "only in the title; style in both (picture background and title adjective); a "
        f"co-consumption cluster (one of {c.n_clusters}) in neither. Users belong to planted "
        f"groups: {groups}. A visual user prefers certain colours, shapes and patterns; a textual "
        "user certain categories and brands; a co-consumption user certain clusters, which no "
        "content reveals. Each user draws items without replacement with probability proportional "
        f"to popularity^{c.popularity_exponent:g} x exp({c.beta:g} x affinity), popularity Zipf; "
        f"activity is long-tailed (at least {c.min_interactions} per user). "
        f"{int(world.missing_title.sum())} titles and {int(world.missing_image.sum())} images are "
        "missing on purpose."
    )


def _group_names(config: WorldConfig) -> list[str]:
    names = [GROUP_NAMES[m] for m in config.group_modalities]
    return [n if names.count(n) == 1 else f"{n}-{names[:g].count(n) + 1}" for g, n in enumerate(names)]


def ground_truth_dict(world: World, preset: str, seed: int) -> dict:
    """The planted truth in plain JSON types, keyed by the ids written in the CSVs."""
    c = world.config
    user_ids, item_ids = _ids("u", c.n_users), _ids("i", c.n_items)
    values = world.attribute_values
    names = _group_names(c)
    return {
        "preset": preset,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "description": _description(world, preset, seed),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(c).items()},
        "group_names": names,
        "group_modality": list(c.group_modalities),
        "group_preference": {names[g]: {a: [values[a][v] for v in vs] for a, vs in pref.items()}
                             for g, pref in enumerate(world.group_preferred)},
        "user_group": {uid: int(g) for uid, g in zip(user_ids, world.user_group)},
        "user_preference": {uid: {a: values[a][v] for a, v in fav.items()}
                            for uid, fav in zip(user_ids, world.user_favourite)},
        "attribute_modality": dict(ATTRIBUTE_MODALITY),
        "attribute_values": {a: list(values[a]) for a in sorted(values)},
        "item_attributes": {a: {iid: int(v) for iid, v in zip(item_ids, world.item_attributes[a])}
                            for a in sorted(values)},
        "item_popularity_rank": {iid: int(r) for iid, r in zip(item_ids, world.popularity_rank)},
        "missing_titles": [iid for iid, m in zip(item_ids, world.missing_title) if m],
        "missing_images": [iid for iid, m in zip(item_ids, world.missing_image) if m],
        "n_images": int((~world.missing_image).sum()),
    }


def write_world(world: World, out_dir: Path, preset: str, seed: int,
                rng: np.random.Generator) -> Path:
    """Render pictures and titles (nuisance from ``rng``) and write the dataset folder."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    c = world.config
    user_ids, item_ids = _ids("u", c.n_users), _ids("i", c.n_items)
    attr = {a: [world.attribute_values[a][v] for v in world.item_attributes[a]]
            for a in world.item_attributes}
    rows, written = [], ["items.csv", "interactions.csv", "ground_truth.json"]
    for i, iid in enumerate(item_ids):
        title = render.render_title(attr["category"][i], attr["brand"][i], attr["style"][i], rng)
        img = render.render_image(attr["colour"][i], attr["shape"][i], attr["pattern"][i],
                                  attr["style"][i], c.image_size, rng)
        image = ""
        if not world.missing_image[i]:
            image = f"images/{iid}.png"
            (out_dir / image).write_bytes(render.png_bytes(img))
            written.append(image)
        rows.append((iid, "" if world.missing_title[i] else title, image))
    with open(out_dir / "items.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("item_id", "title", "image"))
        writer.writerows(rows)
    with open(out_dir / "interactions.csv", "w", newline="", encoding="utf-8") as f:
        f.write("user_id,item_id,timestamp\n")
        f.writelines(f"{user_ids[u]},{item_ids[i]},{t}\n"
                     for u, i, t in zip(world.users, world.items, world.timestamps))
    truth = ground_truth_dict(world, preset, seed)
    (out_dir / "ground_truth.json").write_text(json.dumps(truth, sort_keys=True, indent=1) + "\n",
                                               encoding="utf-8")
    # written last: its presence marks a complete folder, its checksums an intact one
    manifest = {"generator_version": GENERATOR_VERSION,
                "files": {name: _sha256(out_dir / name) for name in sorted(written)}}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    return out_dir


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate_world(config: WorldConfig, seed: int, out_dir: Path, preset: str = "custom") -> Path:
    """Generate a world into ``out_dir`` (created). Same config and seed -> same bytes in every file."""
    sim_seq, render_seq = np.random.SeedSequence(seed).spawn(2)
    world = simulate_world(config, np.random.default_rng(sim_seq))
    return write_world(world, Path(out_dir), preset, seed, np.random.default_rng(render_seq))


def load_ground_truth(folder: str | Path) -> dict:
    """Read a world folder's ``ground_truth.json`` (keys by user and item id, as written)."""
    path = Path(folder) / "ground_truth.json"
    if not path.is_file():
        raise DatasetError(f"{path}: no ground_truth.json (only generated worlds have one)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None


def _world_problem(folder: Path, preset: str, seed: int) -> str | None:
    """None when ``folder`` holds an intact world of this preset, seed and generator version, else
    what is wrong with it (every file is checked against its sha256 in the manifest)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = dict(manifest["files"])
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} unreadable"
    for name in ("items.csv", "interactions.csv", "ground_truth.json"):
        if name not in files:
            return f"{MANIFEST} does not list {name}"
    for name, digest in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its sha256 in {MANIFEST}"
    try:
        truth = json.loads((folder / "ground_truth.json").read_text(encoding="utf-8"))
        made_by = (truth["generator_version"], truth["preset"], truth["seed"])
    except (ValueError, KeyError, TypeError):
        return "ground_truth.json unreadable"
    if made_by != (GENERATOR_VERSION, preset, seed):
        return "made by another generator version, preset or seed"
    return None


def ensure_world(preset: str, seed: int = 0) -> Path:
    """Path of ``data_home()/world-<preset>-seed<seed>``, generated on first use.

    Generation writes into a temporary folder next to it and renames it into place, so a crash
    or a concurrent caller never leaves a half-written world under the final name. A folder from
    another generator version, or an incomplete or damaged one (a file missing or not matching its
    sha256 in the manifest), is replaced, and stderr says why.
    """
    if preset not in WORLD_PRESETS:
        raise OptionError(f"world preset {preset!r}: choose one of {sorted(WORLD_PRESETS)}")
    home = data_home()
    final = home / f"world-{preset}-seed{seed}"
    problem = _world_problem(final, preset, seed)
    if problem is None:
        return final
    if final.exists():
        sys.stderr.write(f"{final}: {problem}; regenerating the world from seed {seed}\n")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=home))
    try:
        generate_world(WORLD_PRESETS[preset], seed, tmp, preset=preset)
        tmp.chmod(0o755)                            # mkdtemp makes it private to its creator
        if _world_problem(final, preset, seed) is None:   # a concurrent caller finished first
            return final
        if final.exists():                          # stale or damaged: move aside, then replace
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale-", dir=home))
            os.replace(final, stale / "old")
            shutil.rmtree(stale)
        try:
            os.replace(tmp, final)
        except OSError:
            if _world_problem(final, preset, seed) is not None:  # not a concurrent caller's world
                raise

    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final
