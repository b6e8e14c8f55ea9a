"""Which model to load, and loading it: the one ``--model`` > ``MENDICANT_MODEL`` > bundled rule.

``--batch``, ``--audit``, ``--version``, the GUI and the server all resolve the card here, so they can never
name or load different models.
"""

from __future__ import annotations

import os
from pathlib import Path

from mendicant_desktop.core.bundle import ModelBundle, ModelCard, default_model_card
from mendicant_desktop.core.errors import MendicantError, ModelVerificationError
from mendicant_desktop.core.inference import Engine

from .errors import ModelLoadError

#: The environment variable naming a model card (or its .onnx) to use instead of the bundled model.
MODEL_ENV = "MENDICANT_MODEL"


def resolve_card(card: str | os.PathLike | None = None) -> Path:
    """The model card to load: ``card`` if given, else ``$MENDICANT_MODEL``, else the bundled card.

    A path to the ``.onnx`` file means its ``.json`` card. Raises :class:`ModelVerificationError` when there is
    no bundled card (or several and no choice).
    """
    chosen = card or os.environ.get(MODEL_ENV) or None
    path = Path(chosen) if chosen else default_model_card()
    return path.with_suffix(".json") if path.suffix == ".onnx" else path


def load_card(card: str | os.PathLike | None = None) -> ModelCard:
    """The resolved model card, parsed (not the model file: cheap, for ``--version`` and the About box)."""
    return ModelCard.load(resolve_card(card))


def load_bundle(card: str | os.PathLike | None = None) -> ModelBundle:
    """Load and verify the resolved model. Raises :class:`ModelLoadError` with the reason."""
    try:
        return ModelBundle.load(resolve_card(card))
    except ModelVerificationError as exc:
        raise ModelLoadError(f"model verification failed: {exc}") from None
    except MendicantError as exc:
        raise ModelLoadError(f"cannot load the model: {exc}") from None


def make_engine(bundle: ModelBundle, threads: int | None = None) -> Engine:
    """An inference engine on a verified bundle. Raises :class:`ModelLoadError` when ORT refuses it."""
    try:
        return Engine(bundle, threads=threads)
    except MendicantError as exc:
        raise ModelLoadError(f"cannot load the model: {exc}") from None
    except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
        raise ModelLoadError(f"cannot start the model: {type(exc).__name__}: {exc}") from None


def load_engine(card: str | os.PathLike | None = None, threads: int | None = None) -> Engine:
    """Resolve, verify and load the model (see :func:`resolve_card`) into an :class:`Engine`."""
    return make_engine(load_bundle(card), threads)


def describe_model(card: str | os.PathLike | None = None) -> str:
    """One line naming the model that :func:`load_engine` would load (``--version``)."""
    try:
        c = load_card(card)
    except ModelVerificationError as exc:
        return f"model: unavailable ({exc})"
    return f"model {c.name} {c.version} (sha256 {c.sha256[:12]})"
