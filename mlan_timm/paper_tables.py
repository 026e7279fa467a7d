"""Numbers reported in the MLAN paper (Qin et al., IEEE Access 2022, doi 10.1109/ACCESS.2022.3210711).

Only values transcribed from the paper's tables belong here; every entry names its table. The full text of the
paper could not be consulted while this package was written (no offline copy), so the tables are still empty and
every comparison renders the paper column as "not transcribed". Add values as
``PAPER[("table4", "<row key>")] = "<value as printed>"`` with the table number in the key; never estimate.
"""
from typing import Dict, Optional, Tuple

#: (table id, row key) -> value exactly as printed in the paper (string, unit included, e.g. "0.27M").
PAPER: Dict[Tuple[str, str], str] = {}

NOT_TRANSCRIBED = "not transcribed"


def paper_value(table: str, key: str) -> Optional[str]:
    """The paper's printed value for ``key`` in ``table``, or ``None`` when it has not been transcribed."""
    return PAPER.get((table, key))


def paper_cell(table: str, key: str) -> str:
    """Markdown cell text for the paper column: the printed value or :data:`NOT_TRANSCRIBED`."""
    value = paper_value(table, key)
    return NOT_TRANSCRIBED if value is None else value
