"""A bentofile for the model MODEL_TAG names, whose Python packages include the extras it needs.

    bentoml build -f "$(python -m sklearn_service.bento_extras)"

A model that needs XGBoost, LightGBM or CatBoost records it in its metadata (`requires`). This writes
`requirements-bento.txt` (requirements.txt and those extras files, one after the other) and
`bentofile.model.yaml` (bentofile.yaml pointing at it) in the project root, and prints the
bentofile's path. A model that needs nothing extra gets bentofile.yaml itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from sklearn_service.model_requirements import EXTRAS, stored_requirements

ROOT = Path(__file__).resolve().parent.parent
# BentoML refuses hidden files, so these two are plain names (not committed: written per build)
BENTOFILE, MODEL_BENTOFILE, MODEL_REQUIREMENTS = "bentofile.yaml", "bentofile.model.yaml", "requirements-bento.txt"


def bentofile_for(tag: str) -> Path:
    import bentoml

    requires = stored_requirements(bentoml.models.get(tag).info.metadata)
    unknown = [requires[module] for module in requires if module not in EXTRAS]
    if unknown:
        raise SystemExit(f"error: the model needs {', '.join(unknown)}, which has no requirements-*.txt here")
    if not requires:
        return ROOT / BENTOFILE
    config = yaml.safe_load((ROOT / BENTOFILE).read_text())
    requirements = config["python"]["requirements_txt"]
    # the files' contents, not `-r` lines: BentoML reads the copy in the bento again without the others
    (ROOT / MODEL_REQUIREMENTS).write_text("".join((ROOT / name).read_text() for name in
                                                   [requirements, *sorted(EXTRAS[m] for m in requires)]))
    config["python"]["requirements_txt"] = MODEL_REQUIREMENTS
    (ROOT / MODEL_BENTOFILE).write_text(yaml.safe_dump(config, sort_keys=False))
    return ROOT / MODEL_BENTOFILE


if __name__ == "__main__":
    print(bentofile_for(os.environ.get("MODEL_TAG", "sklearn_model:latest")))
    sys.exit(0)
