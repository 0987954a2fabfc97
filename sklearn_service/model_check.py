"""What a stored model is and what it answers, found once at start-up in a short subprocess.

The API service never imports scikit-learn (~160 MB a process), yet before it serves
it must know: that the model loads at all (a FunctionTransformer's module may not be
importable here), its task from the estimator itself (classifier, regressor, outlier
detector, clusterer), its outputs (predict_proba only where the model has it,
score_samples for outlier detectors) and whether its predictions can be explained
(explain.py), that predict gives one value per row, and per
feature whether the model raises on a missing value or an unseen category (those
become a 400 before batching, not a raise inside a batch shared with others).

`bentoml serve`'s main process runs `python -m sklearn_service.model_check <the model's folder>`
and leaves the answer in an environment variable that its workers inherit, so
they read it instead of checking again. A model that fails the check stops the
server with one line naming the model and the reason, instead of a runner
restarting forever.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sklearn_service.category_codes import UNSEEN_CODE
from sklearn_service.model_requirements import install_hint, missing_requirements, stored_requirements, values_per_row
from sklearn_service.signature import Signature

FACTS_ENV = "SKLEARN_SERVICE_MODEL_FACTS"  # the check's answer, for the server's workers
ENV_LIMIT = 100_000  # characters: Linux takes at most 128 KiB in one environment variable
ROOT = Path(__file__).resolve().parent.parent  # the service's folder: the runner imports from here too
CHECK_SECONDS = 600
REFUSED = 3  # the check's exit status for a model it refuses, with one line saying why


def output_columns(outputs: tuple[str, ...], n_classes: int) -> dict[str, slice]:
    """Where each output lies in the runner's predict_all answer: predict in column 0, then each of
    `outputs` in order (predict_proba: one column per class)."""
    columns, start = {"predict": slice(0, 1)}, 1
    for output in outputs:
        width = n_classes if output == "predict_proba" else 1
        columns[output] = slice(start, start + width)
        start += width
    return columns


class ModelError(Exception):
    """The model cannot be served: the message says which and why."""


@dataclass
class ModelFacts:
    signature: Signature  # with the task, and the refusals found by probing
    model_kind: str
    outputs: tuple[str, ...]  # beside predict: predict_proba, score_samples
    explained_output: str | None = None  # what its explanations explain (explain.py): probability, log_odds, value, ...
    not_explainable: str | None = None   # else why its predictions cannot be explained

    def to_json(self) -> dict:
        return {"signature": self.signature.to_metadata(), "model_kind": self.model_kind,
                "outputs": list(self.outputs), "explained_output": self.explained_output,
                "not_explainable": self.not_explainable}

    @classmethod
    def from_json(cls, data: dict) -> "ModelFacts":
        return cls(Signature.from_dict(data["signature"]), data["model_kind"],
                   tuple(data["outputs"]), data.get("explained_output"),
                   data.get("not_explainable"))


# ---- in the check's own process: the model loaded ------------------------------------------------

def estimator_task(model) -> str:
    """classification, regression, outlier_detection, clustering, or `other` (served as predict says)."""
    from sklearn.base import is_classifier, is_clusterer, is_outlier_detector, is_regressor

    if is_classifier(model):
        return "classification"
    for test, task in ((is_regressor, "regression"), (is_outlier_detector, "outlier_detection"),
                       (is_clusterer, "clustering")):
        if test(model):
            return task
    return "classification" if hasattr(model, "classes_") else "other"


def _raising_columns(model, signature: Signature, base: np.ndarray, columns: list[int], value: float) -> list[int]:
    """Those of `columns` where the model raises when `base` holds `value` there (one call when none)."""
    from sklearn_service.serving_model import failing_rows

    if not columns:
        return []
    rows = np.repeat(base, len(columns), axis=0)
    rows[np.arange(len(columns)), columns] = value
    def answer(part):
        model.predict(signature.to_model_input(part))
        return 0.0

    failed = failing_rows(lambda part: answer(rows[part]), np.arange(len(rows)), np.zeros(len(columns)))
    return [columns[i] for i, _ in failed]


def _works(call) -> bool:
    try:
        call()
    except Exception:
        return False
    return True


def inspect(model, metadata: dict, name: str) -> ModelFacts:
    """The facts about a loaded model; ModelError if it cannot be served."""
    signature = Signature.from_metadata(metadata) or Signature.from_estimator(model)
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    kind = metadata.get("model_kind") or type(final).__name__
    if not hasattr(model, "predict"):  # e.g. LocalOutlierFactor without novelty=True
        raise ModelError(f"model {name}: the {kind} has no predict; it cannot be served")
    signature.task = estimator_task(model)
    if signature.task != "classification":
        signature.classes = None
    elif signature.classes is None:
        raise ModelError(f"model {name}: the {kind} classifier has no classes_; it cannot be served")
    base = np.nan_to_num(signature.example_matrix(), nan=0.0)  # a complete row: gaps as 0 / first category
    X = signature.to_model_input(base)
    try:
        predicted = np.asarray(model.predict(X))
    except Exception as exc:
        print(f"warning: model {name} raised on its example row ({type(exc).__name__}: {exc}); "
              "not probing what it refuses", file=sys.stderr)
        predicted = None
    if predicted is not None:
        if (count := values_per_row(predicted)) > 1:
            raise ModelError(f"model {name} answers {count} values per row (a multi-output {kind}); "
                             "this service serves one value per row: fit one model per target")
        if signature.task != "classification" and predicted.dtype.kind not in "biuf":
            raise ModelError(f"model {name} ({kind}) predicts {predicted.dtype} values but has no classes_")
        nullable = [i for i, f in enumerate(signature.features) if f.nullable]
        for i in _raising_columns(model, signature, base, nullable, np.nan):
            signature.features[i].nullable = False
        open_categories = [i for i, f in enumerate(signature.features)
                           if f.is_category and f.unseen_categories == "accepted"]
        for i in _raising_columns(model, signature, base, open_categories, UNSEEN_CODE):
            signature.features[i].unseen_categories = "refused"
    outputs = []
    if signature.task == "classification" and hasattr(model, "predict_proba") and \
            (predicted is None or _works(lambda: model.predict_proba(X))):
        outputs.append("predict_proba")
    if signature.task == "outlier_detection" and hasattr(model, "score_samples") and \
            (predicted is None or _works(lambda: model.score_samples(X))):
        outputs.append("score_samples")
    return ModelFacts(signature, kind, tuple(outputs))


def explainability(model, signature: Signature, folder: str) -> tuple[str | None, str | None]:
    """(the output its explanations explain, None) when the model's predictions can be explained
    (explain.py), else (None, why not). Any failure means no explanations, never no service."""
    from sklearn_service.explain import NotExplainable, for_stored_model

    try:
        return for_stored_model(model, signature, folder).output_name, None
    except NotExplainable as exc:
        return None, str(exc)
    except (ImportError, NameError):  # this project's code is broken: say so, rather than hide it
        raise
    except Exception as exc:
        return None, f"cannot explain this model: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class StoredFolder:
    """What the check reads of a model's folder in a BentoML store: model.yaml (BentoML writes it with
    yaml.safe_dump) and the pickle bentoml.sklearn saves. Read without importing BentoML, a quarter
    of a check's time; the runner loads the model through BentoML itself."""
    path: str
    tag: str
    module: str
    metadata: dict

    MODULES = ("bentoml.sklearn", "_bentoml_impl.frameworks.sklearn")  # bentoml.sklearn.load_model's own test
    PICKLE = "saved_model.pkl"

    @classmethod
    def read(cls, path: str | os.PathLike) -> "StoredFolder":
        import yaml

        info = yaml.safe_load((Path(path) / "model.yaml").read_text())
        return cls(str(path), f"{info['name']}:{info['version']}", info["module"], info.get("metadata") or {})

    def load(self):
        """The model, as bentoml.sklearn.load_model loads it."""
        import joblib

        if self.module not in self.MODULES:
            raise ValueError(f"saved with {self.module}, not bentoml.sklearn")
        return joblib.load(Path(self.path) / self.PICKLE)


def check(stored: StoredFolder) -> dict:
    """A stored model's facts as JSON, with its tag; or {"tag", "refused": one line why not}."""
    tag = stored.tag
    if missing := missing_requirements(stored_requirements(stored.metadata)):  # before loading fails on it
        return {"tag": tag, "refused": f"model {tag} cannot be loaded: {missing}"}
    try:
        model = stored.load()
    except Exception as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError):
            hint = (f"; the model needs the module {exc.name!r}: {install_hint(exc.name or '')} "
                    "(a module of your own: make it importable here, PYTHONPATH or packed into the bento)")
        return {"tag": tag, "refused": f"model {tag} cannot be loaded: {type(exc).__name__}: {exc}{hint}"}
    try:
        facts = inspect(model, stored.metadata, tag)
    except ModelError as exc:
        return {"tag": tag, "refused": str(exc)}
    facts.explained_output, facts.not_explainable = explainability(model, facts.signature, stored.path)
    return {"tag": tag, **facts.to_json()}


def main(argv: list[str]) -> int:
    """python -m sklearn_service.model_check FOLDER...: per model one JSON line, its facts or why not.
    One process checks them all: scikit-learn's import (seconds) is most of a check. By folder: inside a
    bento the model lies in the bento's own store, not BENTOML_HOME's."""
    import warnings

    os.nice(10)  # a check while serving (the repository's load) yields the CPU to the server's workers
    warnings.simplefilter("ignore")  # e.g. feature-name warnings on the probe rows
    refused = False
    for arg in argv:
        answer = check(StoredFolder.read(arg))
        if "refused" in answer:  # and on stderr, for a person (or train.py's import check) reading it
            print(answer["refused"], file=sys.stderr)
            refused = True
        print(json.dumps(answer), flush=True)
    return REFUSED if refused else 0


# ---- in the server's processes --------------------------------------------------------------------

def stored_model(model_ref, setting: str = "MODEL_TAG"):
    """The stored model a BentoModel names, or ModelError naming the tag, the setting it came from and
    the models there are."""
    stored = model_ref.stored
    if stored is None:
        import bentoml

        there = sorted({str(m.tag) for m in bentoml.models.list()})
        # a misspelt name: the names closest to it first, so a long store still shows them
        close = difflib.get_close_matches(model_ref.tag.name, sorted({t.split(":")[0] for t in there}), n=5)
        rank = {name: i for i, name in enumerate(close)}
        there.sort(key=lambda t: (rank.get(t.split(":")[0], len(close)), t))
        listed = ", ".join(there[:20]) + (", ..." if len(there) > 20 else "") if there else "none"
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(f"no model {model_ref.tag} in the model store ({setting}){hint}; models there: {listed}")
    return stored


def facts(model_ref) -> tuple[object, ModelFacts]:
    """The stored model and its facts: as the server's main process left them in the environment, else checked now."""
    stored = stored_model(model_ref)
    return stored, facts_of(stored)


def facts_of(stored) -> ModelFacts:
    """facts() of a model in the store."""
    return facts_of_many([stored])[str(stored.tag)]


def facts_of_many(stored: list) -> dict[str, ModelFacts]:
    """facts() of several models in the store, by tag, checked in one process; ModelError for the first
    one refused."""
    cached = _read(os.environ.get(FACTS_ENV))
    if len(stored) == 1 and cached.get("tag") == str(stored[0].tag):
        return {cached["tag"]: ModelFacts.from_json(cached)}
    try:
        done = subprocess.run([sys.executable, "-m", "sklearn_service.model_check", *(m.path for m in stored)],
                              cwd=ROOT, capture_output=True, text=True, timeout=CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        raise ModelError(f"model(s) {', '.join(str(m.tag) for m in stored)}: loading and checking took over "
                         f"{CHECK_SECONDS} s") from None
    for line in done.stderr.splitlines():
        if line.startswith("warning: "):
            print(line, file=sys.stderr)
    answers = {a["tag"]: a for a in map(_read, done.stdout.splitlines()) if "tag" in a}
    found = {}
    for model in stored:
        tag = str(model.tag)
        answer = answers.get(tag)
        if answer is None:  # the check itself failed (a crash, not a refusal)
            lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            raise ModelError(f"model {tag}: the start-up check failed: {lines[-1]}")
        if "refused" in answer:
            raise ModelError(answer["refused"])
        found[tag] = ModelFacts.from_json(answer)
        text = json.dumps(answer)
        if len(stored) == 1 and len(text) <= ENV_LIMIT:  # larger (a huge signature): each worker checks for itself
            os.environ[FACTS_ENV] = text  # inherited by the workers BentoML starts from this process
    return found


def _read(text: str | None) -> dict:
    try:
        found = json.loads(text or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
