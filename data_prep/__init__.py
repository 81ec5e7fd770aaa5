"""Converters from public raw datasets to the dataset folder format (README.md, FIXED).

- ``data_prep.movielens_posters``: MovieLens posters + titles + ml-latest-small ratings.
- ``data_prep.amazon``: Amazon review subsets used by GFMFR (downloads ratings, metadata, images).
- ``data_prep.ninerec``: NineRec downstream sets used by FedMR (from the hand-downloaded archive).
- ``data_prep.ml100k``: MovieLens-100K (GroupLens archive or a plain ratings.dat), no images.

Each module has ``convert(...)`` and a command line (``python -m data_prep.<module> --help``).
``movielens_posters.convert`` backs the ``movielens-posters`` preset of ``fedmm_lite.data``: pyproject.toml
registers it as an entry point of the group ``fedmm_lite.converters``. See data_prep/README.md.
"""
