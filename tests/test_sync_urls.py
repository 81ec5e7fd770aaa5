"""One repository URL (fedmm_lite.colab): every badge, install cell, _config.yml and README agree
with it (book/tools/sync_urls.py), and the script rewrites what differs."""
import importlib.util
import json
import re
import shutil
from pathlib import Path

import yaml

from fedmm_lite import colab

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sync_urls", ROOT / "book" / "tools" / "sync_urls.py")
sync_urls = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_urls)


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_the_repository_agrees_with_fedmm_lite_colab():
    changes, problems = sync_urls.plan()
    assert problems == []
    assert [str(p.relative_to(ROOT)) for p in changes] == []


def test_each_badge_opens_its_own_notebook_and_each_install_cell_uses_the_url():
    owner_repo = colab.REPOSITORY_URL.split("github.com/")[1]
    chapters = sorted((ROOT / "book").glob("*.ipynb"))
    assert chapters
    for path in sync_urls.notebooks():
        relative = path.relative_to(ROOT).as_posix()
        first = "".join(_cells(path)[0]["source"])
        assert f"colab.research.google.com/github/{owner_repo}/blob/{colab.BRANCH}/{relative})" in first, relative
        install = next("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")
        assert 'if "google.colab" in sys.modules:' in install, relative
        assert f'git+{colab.REPOSITORY_URL}@{colab.BRANCH}"' in install, relative


def test_config_and_readme_name_the_same_repository():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"] == {"url": colab.REPOSITORY_URL, "branch": colab.BRANCH}
    assert colab.install_command() in (ROOT / "README.md").read_text()


def test_sync_rewrites_another_url_everywhere_and_reports_a_missing_install_cell(tmp_path):
    (tmp_path / "book" / "exercises").mkdir(parents=True)
    for name in ("01_data.ipynb", "02_encoding.ipynb"):
        text = (ROOT / "book" / name).read_text().replace(colab.REPOSITORY_URL, "https://github.com/old/place")
        (tmp_path / "book" / name).write_text(text)
    (tmp_path / "_config.yml").write_text((ROOT / "_config.yml").read_text().replace(
        f"url: {colab.REPOSITORY_URL}", "url: https://github.com/old/place"))
    (tmp_path / "README.md").write_text('x\n\npip install "fedmm_lite @ git+https://github.com/old/place" umap-learn\n')
    changes, problems = sync_urls.plan(tmp_path)
    assert problems == []
    assert sorted(p.name for p in changes) == ["01_data.ipynb", "02_encoding.ipynb", "README.md", "_config.yml"]
    for path, text in changes.items():
        assert "old/place" not in text
        path.write_text(text)
    assert sync_urls.plan(tmp_path) == ({}, [])
    # a notebook whose install cell is gone is a problem the script cannot fix by itself
    nb = json.loads((tmp_path / "book" / "01_data.ipynb").read_text())
    nb["cells"] = [c for c in nb["cells"] if not re.search(r"%pip install", "".join(c["source"]))]
    (tmp_path / "book" / "01_data.ipynb").write_text(json.dumps(nb))
    _, problems = sync_urls.plan(tmp_path)
    assert problems == ["book/01_data.ipynb: the first code cell is not the install cell (%pip install ... fedmm_lite)"]
