"""The application layer: what every front end (``cli``, ``gui``, the server) does, on top of ``core``.

No Qt, no argparse, no web framework here. The modules, each one place for its rule:

* :mod:`.model` -- which model (``--model`` > ``$MENDICANT_MODEL`` > bundled) and loading it;
* :mod:`.inputs` -- finding images: one extension list, a content check, one walk;
* :mod:`.assessment` -- the one scoring path: ``assess()`` returns one frozen :class:`Assessment`;
* :mod:`.scoring` -- ``iter_scored()``: the same steps over a stream, batched, in order;
* :mod:`.tables` -- the one reader of labels and metadata CSVs;
* :mod:`.rows` / :mod:`.output` -- the one row schema and formatter; CSV/JSONL row files and ``--resume``;
* :mod:`.quality` / :mod:`.images` -- image-quality and domain warnings; the one downscaler;
* :mod:`.audit_run` / :mod:`.audit_text` -- the audit run of ``--audit`` and the Audit tab, and its text;
* :mod:`.errors` -- the user-facing errors and :class:`ExitCode`.

See ``docs/app_layer.md`` for the API summary.
"""

from __future__ import annotations

from .assessment import Assessment, Failure, assess, rescore, with_threshold
from .errors import ExitCode, LabelsError, ModelLoadError, OutputFileError, UsageError, failure_reason
from .inputs import IMAGE_EXTENSIONS, InputItem, iter_inputs
from .model import load_engine, resolve_card
from .rows import COLUMNS, columns_for, format_line
from .scoring import Scored, iter_scored

__all__ = [
    "COLUMNS", "IMAGE_EXTENSIONS", "Assessment", "ExitCode", "Failure", "InputItem", "LabelsError", "ModelLoadError",
    "OutputFileError", "Scored", "UsageError", "assess", "columns_for", "failure_reason", "format_line",
    "iter_inputs", "iter_scored", "load_engine", "rescore", "resolve_card", "with_threshold",
]
