"""Which models the service serves, in every process of one `bentoml serve`, and changing that live.

Configured: `MODELS` in the environment or `app.models` (tags, comma-separated in the
variable; `name` is `name:latest`; `all` is the latest version of every model in the
store), else MODEL_TAG alone. The first listed (or `app.default_model`) is the
default model, which answers the classic routes (/predict, ...).

What is served now lives in one small JSON record, `served.json`, in a folder that
every process of the server shares: `bentoml serve`'s main process makes the folder
and names it in STATE_ENV, which its workers inherit (as they inherit the model
check's answer). A load or unload through any API worker rewrites the record
atomically (rename, under a file lock); every API worker stats it on each model
lookup and takes the change before answering, so after a repository call returns,
every worker answers from the new record. Runners need no telling: each runner call
names the exact tag its rows were encoded for, and a runner loads a version on its
first call for it (ModelRunner.infer). Each checked model's facts are kept beside
the record, so a version is checked once per server, not once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sys
import tempfile
import typing as t
from dataclasses import dataclass
from pathlib import Path

from sklearn_service import model_check
from sklearn_service.errors import RequestError, runner_failure
from sklearn_service.log_limit import limited
from sklearn_service.user_input import shown

logger = logging.getLogger("sklearn_service")

STATE_ENV = "SKLEARN_SERVICE_STATE"  # the server's shared folder, for its workers
RECORD = "served.json"


@dataclass(frozen=True)
class Served:
    """The record: the served version of each model by name, which answers the classic routes, and
    why a model by name is not served (unloaded, its load failed)."""
    models: dict[str, str]       # name -> name:version
    default: str
    reasons: dict[str, str]      # name -> why it is not served

    def to_json(self) -> dict:
        return {"models": self.models, "default": self.default, "reasons": self.reasons}


def configured(app: dict) -> tuple[list[str], str | None, str]:
    """The configured tags as written, the default model's name if configured apart, and the setting
    they came from (for messages)."""
    default = app.get("default_model")
    if os.environ.get("MODELS", "").strip():
        return _listed(os.environ["MODELS"]), default, "MODELS"
    if app.get("models"):
        return _listed(app["models"]), default, "app.models"
    return [os.environ.get("MODEL_TAG", "sklearn_model:latest")], default, "MODEL_TAG"


def _listed(models: str | list) -> list[str]:
    tags = models.split(",") if isinstance(models, str) else models
    return [tag for tag in (str(t).strip() for t in tags) if tag]


def resolve(tag: str, setting: str = "MODELS"):
    """The stored model a configured tag names (name = name:latest), or ModelError naming it."""
    import bentoml

    try:
        ref = bentoml.models.BentoModel(tag if ":" in tag else f"{tag}:latest")
    except (ValueError, bentoml.exceptions.BentoMLException):
        raise model_check.ModelError(f"{setting} {shown(tag)} is not a model tag: name or name:version, each "
                                     "letters, digits, '_', '-' or '.'") from None
    return model_check.stored_model(ref, setting)


def latest_in_store() -> list:
    """The latest version of every model in the store, by name."""
    import bentoml

    latest: dict[str, t.Any] = {}
    for model in bentoml.models.list():
        known = latest.get(model.tag.name)
        if known is None or model.info.creation_time > known.info.creation_time:
            latest[model.tag.name] = model
    return [latest[name] for name in sorted(latest)]


def starting_models(app: dict) -> tuple[list, str]:
    """The configured models, each stored and distinct by name, and the default's name."""
    tags, default, setting = configured(app)
    stored = latest_in_store() if tags == ["all"] else [resolve(tag, setting) for tag in tags]
    if not stored:
        raise model_check.ModelError("MODELS=all, but the model store holds no model")
    names = [m.tag.name for m in stored]
    if tags == ["all"] and default is None:  # no order given: MODEL_TAG's model answers /predict, if stored
        default = os.environ.get("MODEL_TAG", "sklearn_model").partition(":")[0]
        default = default if default in names else None
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise model_check.ModelError(f"{setting} names {', '.join(twice)} more than once: one version per model "
                                     "is served (roll versions with the repository's load)")
    if default is not None and default not in names:
        raise model_check.ModelError(f"app.default_model {shown(default)} is not among the served models "
                                     f"({', '.join(names)})")
    return stored, default or names[0]


@contextlib.contextmanager
def gil_shared_finely() -> t.Iterator[None]:
    """While a worker thread checks, loads or sets up a model (Python, up to seconds), the event loop
    waits for the GIL up to the switch interval (5 ms) each time it needs it, many times a request:
    ten times finer switching keeps the requests served meanwhile near their usual latency. Entered
    from the event loop only; loads that overlap share one change."""
    global _fine_users, _usual_interval
    if _fine_users == 0:
        _usual_interval = sys.getswitchinterval()
        sys.setswitchinterval(_usual_interval / 10)
    _fine_users += 1
    try:
        yield
    finally:
        _fine_users -= 1
        if _fine_users == 0:
            sys.setswitchinterval(_usual_interval)


_fine_users, _usual_interval = 0, 0.005


class StateFolder:
    """The server's shared folder: the record, and each checked model's facts."""

    def __init__(self, path: Path):
        self.path = path
        (path / "facts").mkdir(parents=True, exist_ok=True)
        self.record = path / RECORD

    @classmethod
    def for_this_server(cls) -> "StateFolder":
        """The folder the main process made, in a worker; a new one anywhere else (the main process,
        a build, a test): never another server's record."""
        from bentoml._internal.context import server_context

        inherited = os.environ.get(STATE_ENV)
        if inherited and server_context.worker_index is not None and os.path.isdir(inherited):
            return cls(Path(inherited))
        folder = cls(Path(tempfile.mkdtemp(prefix="sklearn-service-")))
        os.environ[STATE_ENV] = str(folder.path)
        return folder

    def read(self) -> Served:
        data = json.loads(self.record.read_text())
        return Served(data["models"], data["default"], data.get("reasons", {}))

    def write(self, served: Served) -> None:
        self.path.mkdir(parents=True, exist_ok=True)  # e.g. after a /tmp cleaner removed it
        _write_atomically(self.record, json.dumps(served.to_json()))

    @contextlib.contextmanager
    def locked(self) -> t.Iterator[None]:
        """One change of the record at a time, across every process of the server."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "served.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _facts_path(self, tag: str) -> Path:
        return self.path / "facts" / f"{tag.replace(':', '+')}.json"  # '+' is in no tag: one file per tag

    def facts(self, stored) -> model_check.ModelFacts:
        """A stored model's facts: checked once per server (model_check, seconds), then read from here."""
        path = self._facts_path(str(stored.tag))
        if not path.exists():
            self._check([stored])
        return model_check.ModelFacts.from_json(json.loads(path.read_text()))

    def _check(self, stored: list) -> None:
        """Checks these models in one process (scikit-learn's import is most of a check) and keeps their facts."""
        for tag, facts in model_check.facts_of_many(stored).items():
            self.keep_facts(tag, facts)

    def keep_facts(self, tag: str, facts: model_check.ModelFacts) -> None:
        (self.path / "facts").mkdir(parents=True, exist_ok=True)
        _write_atomically(self._facts_path(tag), json.dumps(facts.to_json()))

    def start(self, stored: list, default: str) -> Served:
        """At start-up: check every configured model (once per server, all in one process), and write the
        record unless the server has one already (a restarted worker keeps what was loaded live)."""
        unchecked = [m for m in stored if not self._facts_path(str(m.tag)).exists()]
        if unchecked:
            self._check(unchecked)
        with self.locked():
            if self.record.exists():
                return self.read()
            served = Served({m.tag.name: str(m.tag) for m in stored}, default, {})
            self.write(served)
            return served


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)


class RecordWatch:
    """A process's view of the record: read again whenever the file changed (a stat per call)."""

    def __init__(self, folder: StateFolder):
        self.folder = folder
        self._seen: tuple | None = None
        self.served = folder.read()

    def current(self) -> tuple[Served, bool]:
        """The record, and whether it changed since the last call."""
        try:
            stat = os.stat(self.folder.record)
        except OSError:  # removed under the server (a /tmp cleaner): serve on as last read
            limited(logger).warning("record_unreadable", "the served-models record %s is gone; serving on as "
                                                         "last read", self.folder.record)
            return self.served, False
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen == self._seen:
            return self.served, False
        self._seen, self.served = seen, self.folder.read()
        return self.served, True


class ServedModels:
    """An API worker's models: a PredictionCore per served version, kept as the record says, and the
    repository's load and unload (the Open Inference Protocol's model repository extension)."""

    def __init__(self, folder: StateFolder, make_core: t.Callable, warm: t.Callable[[str], t.Awaitable[str]]):
        """`make_core(stored, facts)`: a model's PredictionCore; `warm(tag)`: a runner loads that version
        and tries it, answering what went wrong ("" when nothing did)."""
        self.folder = folder
        self._make, self._warm = make_core, warm
        self._watch = RecordWatch(folder)
        self._cores: dict[str, t.Any] = {}       # tag -> PredictionCore
        self._broken: dict[str, str] = {}        # tag -> why this worker cannot serve it
        self._loading = asyncio.Lock()           # one repository change at a time in this worker
        self._sync(self._watch.served)

    def _sync(self, served: Served) -> None:
        for tag in served.models.values():
            if tag not in self._cores and tag not in self._broken:
                try:
                    stored = _stored(tag)
                    self._cores[tag] = self._make(stored, self.folder.facts(stored))
                except Exception as exc:  # e.g. deleted from the store since: the others keep serving
                    logger.error("cannot serve %s: %r", tag, exc)
                    self._broken[tag] = f"{type(exc).__name__}: {exc}"
        for tag in [tag for tag in self._cores if tag not in served.models.values()]:
            self._cores.pop(tag).retire()

    def served(self) -> Served:
        served, changed = self._watch.current()
        if changed:
            self._sync(served)
        return served

    def get(self, name: str, version: str | None = None):
        """The PredictionCore serving `name` (that version, if given), or None."""
        tag = self.served().models.get(name)
        core = self._cores.get(tag) if tag is not None else None
        return core if core is not None and version in (None, core.version) else None

    @property
    def default(self):
        served = self.served()
        return self._cores[served.models[served.default]]

    def missing(self, name: str, version: str | None = None) -> RequestError:
        """The 404 for a model not served here: why, and which models are."""
        served = self.served()
        asked = f"{shown(name)}" + (f" version {shown(version)}" if version is not None else "")
        if name in served.models:
            why = f"{name} is served as {served.models[name]}"
        else:
            why = served.reasons.get(name) or "not loaded"
        return RequestError("unknown_model", f"no model {asked} is served ({why}); served models: "
                                             f"{', '.join(sorted(served.models))}", 404)

    def listing(self) -> list[dict]:
        """The served models, default first."""
        served = self.served()
        names = sorted(served.models, key=lambda n: (n != served.default, n))
        return [{"name": name, "tag": core.metadata["tag"], "version": core.version, "task": core.signature.task,
                 "model_kind": core.model_kind, "state": "READY", "default": name == served.default}
                for name in names if (core := self._cores.get(served.models[name])) is not None]

    def index(self, ready_only: bool = False) -> list[dict]:
        """Every model in the store, each version with its state: READY (served) or UNAVAILABLE, and why."""
        import bentoml

        served, entries = self.served(), []
        for model in sorted(bentoml.models.list(), key=lambda m: (m.tag.name, m.info.creation_time)):
            name, tag = model.tag.name, str(model.tag)
            if served.models.get(name) == tag:
                state, reason = "READY", ""
            elif name in served.models:
                state, reason = "UNAVAILABLE", f"version {served.models[name].partition(':')[2]} is served"
            else:
                state, reason = "UNAVAILABLE", served.reasons.get(name, "not loaded")
            if state == "READY" or not ready_only:
                entries.append({"name": name, "version": model.tag.version, "state": state, "reason": reason})
        return entries

    async def load(self, name: str, version: str | None = None):
        """Serves `name:version` (latest if None) beside what is served, tries it, then lets it take over:
        requests already in flight finish on the version they started on. A failure changes nothing
        served and raises RequestError with the reason."""
        async with self._loading:
            stored = _in_store(name, version)
            tag, name = str(stored.tag), stored.tag.name  # BentoML's names are lowercase: Churn is churn
            if self.served().models.get(name) == tag and tag in self._cores:
                return self._cores[tag]
            # a runner checks it as the start-up check does and keeps its facts here, loads it and
            # predicts its example row (scikit-learn is imported there already: no new process's seconds)
            try:
                problem = await self._warm(tag)
            except Exception as exc:  # the runner is down, restarting or timed out: nothing changed
                raise runner_failure(exc, logger) from None
            if problem:
                raise self._failed(name, tag, problem, 422)
            try:
                with gil_shared_finely():  # its validation, metrics and drift set up off the event loop
                    core = await asyncio.to_thread(self._make, stored, self.folder.facts(stored))
            except Exception as exc:
                raise self._failed(name, tag, f"{type(exc).__name__}: {exc}", 500) from None
            try:
                await core.check()  # and through this worker's whole path
            except RequestError as exc:
                core.retire()
                raise self._failed(name, tag, str(exc), exc.status) from None
            self._cores[tag] = core
            self._broken.pop(tag, None)
            self._change(lambda s: Served({**s.models, name: tag}, s.default, _without(s.reasons, name)))
            return core

    async def unload(self, name: str) -> None:
        async with self._loading:  # not in the middle of a load, which would bring it back
            self._unload(name)

    def _unload(self, name: str) -> None:
        served = self.served()
        if name not in served.models:
            raise self.missing(name)
        if name == served.default:
            raise RequestError("default_model", f"{name} is the default model: it answers /predict and the other "
                                                "classic routes, so it stays; load another version of it to replace it",
                               409)
        self._change(lambda s: Served(_without(s.models, name), s.default, {**s.reasons, name: "unloaded"}))

    def _failed(self, name: str, tag: str, reason: str, status: int) -> RequestError:
        logger.warning("load of %s refused: %s", tag, reason)
        if name not in self.served().models:  # the index says why it is not served
            self._change(lambda s: Served(s.models, s.default, {**s.reasons, name: f"load of {tag} failed: "
                                                                                   f"{reason[:300]}"}))
        return RequestError("load_failed", f"{tag} not loaded, nothing served changed: {reason}", status)

    def _change(self, change: t.Callable[[Served], Served]) -> None:
        with self.folder.locked():
            try:
                current = self.folder.read()
            except FileNotFoundError:  # removed under the server: the one last read
                current = self._watch.served
            self.folder.write(change(current))
        self.served()


def _without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


def _stored(tag: str):
    import bentoml

    return bentoml.models.get(tag)


def _in_store(name: str, version: str | None):
    """The stored model a repository call names, or a 404 saying what the store holds."""
    import bentoml

    try:
        tag = bentoml.Tag(name, version or "latest")
        return bentoml.models.get(tag)
    except (ValueError, bentoml.exceptions.BentoMLException):
        pass
    versions = [str(m.tag.version) for m in bentoml.models.list() if m.tag.name == name]
    if versions and version is not None:
        raise RequestError("unknown_version", f"model {shown(name)} has no version {shown(version)}; its versions: "
                                              f"{', '.join(sorted(versions)[:20])}", 404)
    names = sorted({m.tag.name for m in bentoml.models.list()})
    raise RequestError("unknown_model", f"no model {shown(name)} in the model store; models there: "
                                        f"{', '.join(names[:50]) or 'none'}", 404)
