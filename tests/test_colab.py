"""fedmm_lite.colab (the repository URL, the install command, the environment report) and the
FEDMM_DEVICE override of ``resolve_device("auto")``."""
import pytest
import torch

from fedmm_lite import colab
from fedmm_lite.config import resolve_device
from fedmm_lite.errors import FedmmError


def test_install_command_names_the_repository_branch_and_only_what_colab_lacks():
    command = colab.install_command()
    assert f"git+{colab.REPOSITORY_URL}@{colab.BRANCH}" in command
    packages = command.split('"')[-1].split()
    assert packages == list(colab.COLAB_EXTRAS)
    assert "torch" not in packages and "ipywidgets" not in packages


def test_colab_url_and_badge_point_at_the_notebook_on_the_branch():
    owner_repo = colab.REPOSITORY_URL.split("github.com/")[1]
    url = colab.colab_url("book/01_data.ipynb")
    assert url == f"https://colab.research.google.com/github/{owner_repo}/blob/{colab.BRANCH}/book/01_data.ipynb"
    assert colab.colab_badge("book/01_data.ipynb") == f"[![Open In Colab]({colab.COLAB_BADGE})]({url})"


@pytest.mark.parametrize("value, shown", [(None, True), ("", True), ("0", True), ("1", False), ("true", False)])
def test_progress_bars_follow_tqdm_disable(monkeypatch, value, shown):
    if value is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", value)
    assert colab.progress_bars() is shown


def _no_load(*args):
    raise AssertionError("CLIP must not be loaded here")


def test_report_of_an_id_only_chapter_loads_nothing(monkeypatch):
    monkeypatch.setattr(colab, "_load_clip", _no_load)
    monkeypatch.setattr(colab, "model_hub_reachable", lambda *a, **k: pytest.fail("no network check"))
    report = colab.environment_report(uses_features=False)
    assert report.encoder.startswith("none") and not report.pretrained_clip
    assert report.device == str(resolve_device("auto"))
    assert "pretrained CLIP: no" in str(report)


def test_report_default_encoder_is_the_offline_one(monkeypatch):
    from fedmm_lite.encoders import default_offline_encoder

    monkeypatch.setattr(colab, "_load_clip", _no_load)
    report = colab.environment_report(None)
    assert report.encoder == default_offline_encoder() and not report.pretrained_clip


def test_report_auto_offline_falls_back_without_downloading(monkeypatch):
    from fedmm_lite.encoders import default_offline_encoder

    monkeypatch.setattr(colab, "model_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(colab, "_load_clip", _no_load)
    report = colab.environment_report("auto")
    assert report.encoder == default_offline_encoder()
    assert not report.pretrained_clip and "out of reach" in report.note


def test_report_auto_with_the_hub_loads_clip_and_says_so(monkeypatch):
    loaded = []
    monkeypatch.setattr(colab, "model_hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(colab, "_load_clip", lambda spec, device: loaded.append(spec))
    report = colab.environment_report("auto")
    assert loaded == ["clip"]
    assert report.encoder == "clip" and report.pretrained_clip
    assert "pretrained CLIP: yes" in str(report)


def test_report_clip_whose_weights_fail_says_no_and_why(monkeypatch):
    def failing(spec, device):
        raise FedmmError("--encoder clip: pretrained weights could not be downloaded")

    monkeypatch.setattr(colab, "model_hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(colab, "_load_clip", failing)
    report = colab.environment_report("clip+minilm")
    assert report.encoder == "clip+minilm" and not report.pretrained_clip
    assert "could not be downloaded" in report.note


def test_report_of_an_encoder_without_pretrained_clip_loads_nothing(monkeypatch):
    monkeypatch.setattr(colab, "_load_clip", _no_load)
    monkeypatch.setattr(colab, "model_hub_reachable", lambda *a, **k: pytest.fail("no network check"))
    for tag in ("clip-random", "pixels+minilm", "clip-random+minilm"):
        report = colab.environment_report(tag)
        assert report.encoder == tag and not report.pretrained_clip


def test_fedmm_device_decides_what_auto_means(monkeypatch):
    monkeypatch.setenv("FEDMM_DEVICE", "cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert colab.environment_report(uses_features=False).device == "cpu"
    assert resolve_device("cpu") == torch.device("cpu")          # an explicit device is kept
    monkeypatch.setenv("FEDMM_DEVICE", "tpu")
    with pytest.raises(ValueError, match="FEDMM_DEVICE=tpu"):
        resolve_device("auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_fedmm_device_cuda_without_cuda_fails_clearly(monkeypatch):
    monkeypatch.setenv("FEDMM_DEVICE", "cuda")
    with pytest.raises(ValueError, match="FEDMM_DEVICE=cuda: CUDA is not available"):
        resolve_device("auto")
