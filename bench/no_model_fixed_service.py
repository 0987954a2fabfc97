"""The no-model service with this project's fixes for BentoML applied: the fairer ceiling."""

from sklearn_service import patches

patches.apply()

from bench.no_model_service import NoModelService  # noqa: E402,F401
