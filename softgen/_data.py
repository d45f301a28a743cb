"""Where the shipped data lives: ``<repo>/templates`` and ``<repo>/targets`` in a source checkout
(and editable installs); ``softgen/data/{templates,targets}`` inside an installed wheel."""
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    for cand in (_HERE / "data" / kind, _HERE.parent / kind):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"softgen installation is missing its {kind}/ directory")
