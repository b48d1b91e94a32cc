"""The dated AWS price tables `mlops plan STACK --cost` prices with (components/cost.py).

Each `aws-<date>.yaml` states its date and where every number came from; PRICE_TABLE names the
one in use. Refresh by copying it to a new date with re-checked prices (commands in the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml

PRICE_TABLE = Path(__file__).resolve().parent / "aws-2026-12-03.yaml"


class PriceError(LookupError):
    """Something the price table cannot price: names the resource, the value and the table file."""


@dataclass(frozen=True)
class PriceTable:
    path: Path
    as_of: date
    sources: dict[str, str]
    hours_per_month: float
    eks: dict[str, Any]
    regions: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: Path = PRICE_TABLE) -> PriceTable:
        doc = yaml.safe_load(path.read_text())
        return cls(path=path, as_of=doc["as_of"], sources=dict(doc["sources"]),
                   hours_per_month=float(doc["hours_per_month"]), eks=doc["eks"], regions=doc["regions"])

    def region(self, name: str) -> dict[str, Any]:
        if name not in self.regions:
            raise PriceError(f"{self.path.name} has no prices for region {name!r} (it has {sorted(self.regions)}); "
                             "add that region's list prices to it")
        return self.regions[name]
