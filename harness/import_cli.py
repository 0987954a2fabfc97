"""train.py as the import tests drive it: a refusal is one line, status 2, and the store unchanged."""

from __future__ import annotations

import bentoml

import train as train_cli


def store_tags() -> set[str]:
    return {str(m.tag) for m in bentoml.models.list()}


def refused(args, capsys, max_chars: int = 1000) -> str:
    """train.py's error line for args, after checking it is one short line and nothing was saved."""
    before = store_tags()
    code = train_cli.main(args)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert len(err) < max_chars, f"{len(err)} chars"
    assert store_tags() == before
    return err
