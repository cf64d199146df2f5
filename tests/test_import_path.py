"""The repository's top-level ``kernels/`` folder must not shadow an installed ``kernels`` package."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_repository_kernels_folder_is_not_importable_as_kernels():
    # The folder is installed as ``longvila_jax.kernels``. As a top-level ``kernels`` (the working
    # directory first on sys.path, as ``python -m`` puts it without ``-P``) it would shadow Hugging
    # Face's ``kernels`` package, and ``import transformers`` models fail on its missing names.
    spec = importlib.util.find_spec("kernels")
    found = pathlib.Path(spec.origin).resolve() if spec is not None and spec.origin else None
    assert found != REPO / "kernels" / "__init__.py", (
        "the repository's kernels/ folder is importable as 'kernels'; run the tests as in the README: "
        ".venv/bin/python -P -m pytest -q tests")
