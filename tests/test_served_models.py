"""Which models are served (served_models.py), in process: configuration, the shared record, the
repository's load and unload with a runner stand-in."""

from __future__ import annotations

import asyncio
import os

import bentoml
import pytest

from sklearn_service import model_check
from sklearn_service.errors import RequestError
from sklearn_service.served_models import RecordWatch, ServedModels, StateFolder, configured, starting_models


@pytest.mark.parametrize("env, app, expected", [
    ({}, {}, (["sklearn_model:latest"], None, "MODEL_TAG")),
    ({"MODEL_TAG": "a:1"}, {}, (["a:1"], None, "MODEL_TAG")),
    ({"MODELS": " a, b:2 ,", "MODEL_TAG": "x"}, {"models": ["c"]}, (["a", "b:2"], None, "MODELS")),
    ({"MODELS": " "}, {"models": ["c", "d:3"], "default_model": "d"}, (["c", "d:3"], "d", "app.models")),
    ({}, {"models": "e,f"}, (["e", "f"], None, "app.models")),
])
def test_configured_models(monkeypatch, env, app, expected):
    for name in ("MODELS", "MODEL_TAG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert configured(app) == expected


@pytest.mark.parametrize("models, words", [
    ("sklearn_model,sklearn_model", "MODELS names sklearn_model more than once"),
    ("no_such_model", r"no model no_such_model:latest in the model store \(MODELS\)"),
    ("a/b", "MODELS 'a/b' is not a model tag"),
])
def test_bad_model_lists_stop_the_start_with_the_reason(trained, monkeypatch, models, words):
    monkeypatch.setenv("MODELS", models)
    with pytest.raises(model_check.ModelError, match=words):
        starting_models({})


def test_a_default_not_served_is_refused(trained, monkeypatch):
    monkeypatch.setenv("MODELS", "sklearn_model")
    with pytest.raises(model_check.ModelError, match="app.default_model 'other' is not among"):
        starting_models({"default_model": "other"})


def test_all_means_the_latest_version_of_every_model(trained, monkeypatch):
    monkeypatch.setenv("MODELS", "all")
    stored, default = starting_models({})
    names = [m.tag.name for m in stored]
    assert names == sorted(set(names)) and "sklearn_model" in names
    assert default == "sklearn_model"  # MODEL_TAG's model answers /predict, not the first name in the store
    latest = {m.tag.name: m for m in bentoml.models.list() if m.tag.name == "sklearn_model"}
    assert str(next(m for m in stored if m.tag.name == "sklearn_model").tag) == str(
        bentoml.models.get("sklearn_model:latest").tag) and latest


class FakeCore:
    """What ServedModels needs of a PredictionCore."""

    def __init__(self, stored, facts, fails: str = ""):
        self.name, self.version = stored.tag.name, stored.tag.version
        self.metadata = {"tag": str(stored.tag)}
        self.signature, self.model_kind, self.retired, self.fails = facts.signature, facts.model_kind, False, fails

    async def check(self):
        if self.fails:
            raise RequestError("model_failed_check", self.fails, 422)

    def retire(self):
        self.retired = True


@pytest.fixture
def models(trained, tmp_path, monkeypatch):
    """A worker's ServedModels over a new record serving the default model; `warm` answers what
    models.problem holds."""
    monkeypatch.setenv("MODELS", "sklearn_model")
    stored, default = starting_models({})
    folder = StateFolder(tmp_path)
    folder.start(stored, default)

    async def warm(tag):
        return served.problem

    served = ServedModels(folder, FakeCore, warm)
    served.problem = ""
    return served


def copy_of_the_default_model(name: str, trained, folder: StateFolder):
    """The default model saved again under another name, its facts already checked."""
    bentoml.sklearn.save_model(name, trained["pipeline"])
    copy = bentoml.models.get(f"{name}:latest")
    facts = folder.path / "facts"
    (facts / f"{name}+{copy.tag.version}.json").write_text((facts / f"{trained['tag'].replace(':', '+')}.json").read_text())
    return copy


def test_load_refusals_change_nothing_served_and_say_why(models, trained):
    copy_of_the_default_model("third_model", trained, models.folder)
    served = models.served().models
    models.problem = "it could not predict its signature's example row"
    with pytest.raises(RequestError, match="not loaded, nothing served changed: it could not predict") as refused:
        asyncio.run(models.load("third_model"))
    assert refused.value.status == 422 and models.served().models == served
    assert "load of third_model:" in models.served().reasons["third_model"]
    # a failed new version of a served model: the version served before stays
    newer = copy_of_the_default_model("sklearn_model", trained, models.folder)
    try:  # sklearn_model:latest is the session's default model: the copy goes whatever happens
        with pytest.raises(RequestError, match=f"{newer.tag} not loaded, nothing served changed"):
            asyncio.run(models.load("sklearn_model"))
        assert models.get("sklearn_model").version == trained["tag"].split(":")[1]
    finally:
        bentoml.models.delete(newer.tag)
    with pytest.raises(RequestError, match="has no version 'nosuch'") as missing:
        asyncio.run(models.load("sklearn_model", "nosuch"))
    assert missing.value.status == 404 and models.served().models == served


def test_unload_of_the_default_model_is_refused_and_an_unloaded_model_says_why(models, trained):
    with pytest.raises(RequestError, match="is the default model") as refused:
        asyncio.run(models.unload("sklearn_model"))
    assert refused.value.status == 409
    assert "not loaded); served models: sklearn_model" in str(models.missing("churn"))


def test_another_workers_change_is_seen_on_the_next_lookup(models, trained):
    """Two workers over one record: what one loads or unloads, the other serves on its next call."""
    other = ServedModels(models.folder, FakeCore, models._warm)
    second = copy_of_the_default_model("second_model", trained, models.folder)
    assert asyncio.run(models.load("second_model")).version == second.tag.version
    assert other.get("second_model").version == second.tag.version
    asyncio.run(models.unload("second_model"))
    assert other.get("second_model") is None and "(unloaded)" in str(other.missing("second_model"))
    index = {(e["name"], e["version"]): e for e in other.index()}
    assert index[("second_model", second.tag.version)]["state"] == "UNAVAILABLE"
    assert index[("sklearn_model", trained["tag"].split(":")[1])]["state"] == "READY"


def test_a_record_change_is_seen_by_inode_not_by_time_alone(tmp_path, trained, monkeypatch):
    monkeypatch.setenv("MODELS", "sklearn_model")
    stored, default = starting_models({})
    folder = StateFolder(tmp_path)
    served = folder.start(stored, default)
    watch = RecordWatch(folder)
    assert watch.current() == (served, True) and watch.current() == (served, False)
    stat = os.stat(folder.record)
    folder.write(type(served)({}, default, {"sklearn_model": "unloaded"}))
    os.utime(folder.record, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time: a coarse clock
    assert watch.current()[0].reasons == {"sklearn_model": "unloaded"}


def test_an_unknown_model_in_the_path_is_not_repeated_in_full(models):
    huge = "m" * 100_000
    missing = models.missing(huge, huge)
    assert missing.status == 404 and len(str(missing)) < 1000 and "served models: sklearn_model" in str(missing)


def test_a_record_removed_under_the_server_keeps_the_last_one_read(models):
    """A /tmp cleaner may remove the folder of a long-running server: it serves on, and a later change
    writes the record again."""
    served = models.served()
    for gone in (models.folder.record, models.folder.path / "served.lock"):
        gone.unlink()
    models.folder.path.rmdir() if not any(models.folder.path.iterdir()) else None
    assert models.served() == served and models.get("sklearn_model") is not None
    with pytest.raises(RequestError, match="is the default model"):
        asyncio.run(models.unload("sklearn_model"))  # refused from the record last read
    models._change(lambda s: s)
    assert models.folder.read() == served


def test_overlapping_loads_restore_the_usual_gil_switch_interval():
    import sys

    from sklearn_service.served_models import gil_shared_finely

    usual = sys.getswitchinterval()
    first, second = gil_shared_finely(), gil_shared_finely()
    first.__enter__()
    second.__enter__()
    assert sys.getswitchinterval() == pytest.approx(usual / 10)
    first.__exit__(None, None, None)  # the other load still runs: still fine
    assert sys.getswitchinterval() == pytest.approx(usual / 10)
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == usual


def test_a_name_is_taken_as_the_store_spells_it(models, trained):
    """BentoML's names are lowercase: Sklearn_Model is sklearn_model, not a second model beside it."""
    assert asyncio.run(models.load("Sklearn_Model")).name == "sklearn_model"
    assert list(models.served().models) == ["sklearn_model"]
