"""A bentofile for the configured models (MODELS, app.models or MODEL_TAG: served_models.py), whose
Python packages include the extras they need, and that serves those models wherever it runs.

    bentoml build -f "$(python -m sklearn_service.bento_extras)"

A model that needs XGBoost, LightGBM or CatBoost records it in its metadata (`requires`). This writes
`requirements-bento.txt` (requirements.txt and those extras files, one after the other) and
`bentofile.model.yaml` (bentofile.yaml pointing at it, and with several models their exact tags in
the bento's MODELS) in the project root, and prints the bentofile's path. One model that needs
nothing extra gets bentofile.yaml itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from sklearn_service.model_requirements import EXTRAS, stored_requirements

ROOT = Path(__file__).resolve().parent.parent
# BentoML refuses hidden files, so these two are plain names (not committed: written per build)
BENTOFILE, MODEL_BENTOFILE, MODEL_REQUIREMENTS = "bentofile.yaml", "bentofile.model.yaml", "requirements-bento.txt"


def bentofile_for(*tags: str, listed: bool = False) -> Path:
    """The bentofile for these models (the first one the default); `listed`: they came from MODELS or
    app.models, which the bento then sets (else its MODEL_TAG default would name another model)."""
    import bentoml

    stored = [bentoml.models.get(tag) for tag in tags]
    requires: dict[str, str] = {}
    for model in stored:
        requires.update(stored_requirements(model.info.metadata))
    unknown = [requires[module] for module in requires if module not in EXTRAS]
    if unknown:
        raise SystemExit(f"error: the model needs {', '.join(unknown)}, which has no requirements-*.txt here")
    if not requires and len(stored) == 1 and not listed:
        return ROOT / BENTOFILE
    config = yaml.safe_load((ROOT / BENTOFILE).read_text())
    if requires:
        requirements = config["python"]["requirements_txt"]
        # the files' contents, not `-r` lines: BentoML reads the copy in the bento again without the others
        (ROOT / MODEL_REQUIREMENTS).write_text("".join((ROOT / name).read_text() for name in
                                                       [requirements, *sorted(EXTRAS[m] for m in requires)]))
        config["python"]["requirements_txt"] = MODEL_REQUIREMENTS
    if len(stored) > 1 or listed:  # the bento packs them all (service.py declares them): it serves them all too
        config["envs"] = [*config.get("envs", []), {"name": "MODELS", "value": ",".join(str(m.tag) for m in stored)}]
    (ROOT / MODEL_BENTOFILE).write_text(yaml.safe_dump(config, sort_keys=False))
    return ROOT / MODEL_BENTOFILE


if __name__ == "__main__":
    from sklearn_service import config, model_check, served_models

    try:
        models, default = served_models.starting_models(config.app())
    except model_check.ModelError as exc:
        raise SystemExit(f"error: {exc}") from None
    models.sort(key=lambda m: m.tag.name != default)
    print(bentofile_for(*(str(m.tag) for m in models), listed=served_models.configured(config.app())[2] != "MODEL_TAG"))
    sys.exit(0)
