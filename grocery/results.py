"""One file's result, and the shapes it travels in. Torch-free: the API and the service import it.

Nested for JSON (``to_dict``: the API's result pages, JSONL exports, ``grocery predict``), flat
for tables (``to_row``: the results table, CSV exports, ``grocery predict --output x.csv``).
"""

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

RESULT_COLUMNS = ("path", "label", "class_id", "confidence", "top5", "error_code", "error_message", "true_label")


@dataclass
class Prediction:
    path: str
    label: str | None = None
    class_id: int | None = None
    confidence: float | None = None
    top5: list[dict] | None = None
    error: dict | None = None  # {"code": ..., "message": ...} when the file could not be classified
    true_label: str | None = None  # in an evaluation, the file's label as its labelled set names it

    @classmethod
    def failed(cls, path: str, code: str, message: str) -> "Prediction":
        return cls(path, error={"code": code, "message": message})

    @classmethod
    def from_row(cls, row) -> "Prediction":
        """From a flat row: a mapping, or an object with RESULT_COLUMNS attributes (a table row)."""
        *fields, code, message, true_label = row_values(row)
        return cls(*fields, error={"code": code, "message": message} if code else None, true_label=true_label)

    def to_dict(self) -> dict:
        """Nested, as JSON shows it; a true label only in an evaluation's rows (a prediction has none)."""
        fields = asdict(self)
        if fields["true_label"] is None:
            del fields["true_label"]
        return fields

    def to_row(self) -> dict:
        error = self.error or {}
        fields = (self.path, self.label, self.class_id, self.confidence, self.top5)
        values = (*fields, error.get("code"), error.get("message"), self.true_label)
        return dict(zip(RESULT_COLUMNS, values, strict=True))


def row_values(row) -> tuple:
    """A flat row's values in RESULT_COLUMNS order: from a mapping, or from a table row's attributes."""
    if isinstance(row, Mapping):
        return tuple(row[c] for c in RESULT_COLUMNS)
    return tuple(getattr(row, c) for c in RESULT_COLUMNS)


def csv_values(row) -> tuple:
    """A flat row's CSV fields, in RESULT_COLUMNS order: top5 as JSON text (csv writes None as empty)."""
    path, label, class_id, confidence, top5, code, message, true_label = row_values(row)
    top5_text = json.dumps(top5) if top5 is not None else None
    return path, label, class_id, confidence, top5_text, code, message, true_label
