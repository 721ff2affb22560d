"""The models of the ARMIN paper, defined once: each is a composition of a cell, an
addressing and a write policy. The demo, the benchmarks, the tests and the tables of the
README and the docs all read them from here."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class PaperModel:
    """One of the paper's models.

    Attributes:
        name: as the paper names it.
        cell: the cell plugin's name.
        addressing: the addressing plugin's name.
        write: the write policy's name.
        hidden_size: the cell's size on the paper's algorithmic tasks.
        copy_recipe: the shipped recipe of the copy task.
    """

    name: str
    cell: str
    addressing: str
    write: str
    hidden_size: int
    copy_recipe: str

    def parts(self, hidden_size: int | None = None, **addressing: Any) -> dict[str, dict[str, Any]]:
        """The ``cell``, ``addressing`` and ``write`` nodes of a model mapping (the
        paper's algorithmic size unless ``hidden_size``; ``addressing`` adds options)."""
        return {
            "cell": {"name": self.cell, "hidden_size": hidden_size or self.hidden_size},
            "addressing": {"name": self.addressing, **addressing},
            "write": {"name": self.write},
        }


PAPER_MODELS: dict[str, PaperModel] = {
    "armin": PaperModel("ARMIN", "armin", "auto", "overwrite", 100, "recipes/algorithmic/copy/armin.yaml"),
    "awta": PaperModel("AwTA", "armin", "tardis", "overwrite", 100, "recipes/algorithmic/copy/awta.yaml"),
    "tardis": PaperModel("TARDIS", "tardis", "tardis", "overwrite", 120, "recipes/algorithmic/copy/tardis.yaml"),
    "ntm": PaperModel("NTM-style", "lstm", "ntm", "erase_add", 100, "recipes/algorithmic/copy/ntm.yaml"),
    "lstm": PaperModel("LSTM baseline", "lstm", "none", "none", 300, "recipes/algorithmic/copy/lstm.yaml"),
}
"""By key, in the paper's order."""


def composition_table(recipes: bool = False) -> str:
    """The Markdown table of the compositions (with the copy recipes when ``recipes``)."""
    header = "| model | cell | addressing | write |" + (" recipe (copy task) |" if recipes else "")
    rows = [header, "|---|---|---|---|" + ("---|" if recipes else "")]
    for model in PAPER_MODELS.values():
        row = f"| {model.name} | `{model.cell}` | `{model.addressing}` | `{model.write}` |"
        rows.append(row + (f" `{model.copy_recipe}` |" if recipes else ""))
    return "\n".join(rows)
