"""Which model files the cache loads: skops files only, trusting skops' defaults and scikit-learn's own classes.

Loading never runs pickle or cloudpickle, and never takes its list of trusted types from the artifact (MLflow's own
``mlflow.sklearn.load_model`` reads ``skops_trusted_types`` from the model's MLmodel file, which whoever can write
the cache folder or the artifact store can edit): the trusted types are computed from the file itself, the same rule
``training.trusted_sklearn_types`` applies when the pipeline logs a model. Anything else in the file (a function, a
class from another package) is refused by name. skops, PyYAML and mlflow are imported when first used.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from typing import TYPE_CHECKING, Any

from promotion_client.errors import CopyRefused

if TYPE_CHECKING:
    from pathlib import Path

_TYPE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def is_sklearn_class(type_name: str) -> bool:
    """Whether ``type_name`` (as skops reports it) is a class defined in scikit-learn itself.

    Functions are refused even from scikit-learn: a function stored in a model is called at predict time (e.g. by
    a FunctionTransformer) with arguments the file chooses.
    """
    if not type_name.startswith("sklearn.") or not _TYPE_NAME.fullmatch(type_name):
        return False
    module_name, _, attr = type_name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return False
    return isinstance(found, type) and (found.__module__ or "").split(".")[0] == "sklearn"


def _model_file(model_dir: Path) -> tuple[str, Path]:
    """The name and path of the skops file the MLmodel of ``model_dir`` names; ``CopyRefused`` for anything else."""
    import yaml

    try:
        mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
        flavor = mlmodel["flavors"]["sklearn"]
        file_name, serialization = flavor["pickled_model"], flavor.get("serialization_format", "pickle")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise CopyRefused(f"MLmodel is missing or has no sklearn flavor ({exc!r}); not an sklearn model") from None
    if serialization != "skops":
        raise CopyRefused(
            f"the model is serialized as {serialization!r}; the loader loads only skops files (pickle and cloudpickle "
            "can run any code): log it with the package's training code (mlflow.sklearn.log_model with skops)"
        )
    path = model_dir / str(file_name)
    if path.parent != model_dir or not path.is_file():
        raise CopyRefused(f"MLmodel names the model file {file_name!r}, which is not a file of the copy")
    return str(file_name), path


def load_sklearn_copy(model_dir: Path) -> tuple[Any, Any]:
    """The sklearn model and its signature from a verified copy of a version's artifacts (MLflow's sklearn flavor).

    Only a skops file is loaded, trusting skops' defaults and scikit-learn's own classes (see the module docstring);
    raises ``CopyRefused`` naming what is refused.
    """
    import skops.io

    file_name, path = _model_file(model_dir)
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises a variety of errors on a damaged file
        raise CopyRefused(f"{file_name} is not a readable skops file ({exc!r})") from None
    trusted = [t for t in untrusted if is_sklearn_class(t)]
    refused = sorted(set(untrusted) - set(trusted))
    if refused:
        raise CopyRefused(
            f"{file_name} holds types the loader does not trust: {', '.join(refused)} (only scikit-learn's own "
            "classes and skops' defaults are loaded)"
        )
    try:
        model = skops.io.load(path, trusted=trusted)
    except Exception as exc:
        raise CopyRefused(f"{file_name} could not be loaded by skops ({exc!r})") from None
    if not callable(getattr(model, "predict_proba", None)):
        raise CopyRefused(f"{file_name} holds a {type(model).__name__}, which has no predict_proba()")
    signature = None
    with contextlib.suppress(Exception):  # informative only; the model loads without it
        from mlflow.models import Model

        signature = Model.load(str(model_dir / "MLmodel")).signature
    return model, signature
