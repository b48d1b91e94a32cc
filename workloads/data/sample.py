"""A synthetic, churn-like tabular dataset for the quickstart, the tests and demos.

`generate(n_rows, seed)` returns one row per customer:

| column | kind | notes |
|---|---|---|
| `customer_id` | string | unique id, not a feature (the example specs drop it) |
| `tenure_months` | integer | 0-72 |
| `monthly_charges` | float | 18-130 |
| `total_charges` | float | ~tenure x charges; about 2% missing |
| `support_calls` | integer | calls in the last 90 days |
| `age` | float | 18-85; about 3% missing |
| `num_products` | integer | 1-5 |
| `contract` | category | `month-to-month`, `one-year`, `two-year` |
| `payment_method` | category | `electronic-check`, `mailed-check`, `bank-transfer`, `credit-card`; about 2% missing |
| `region` | category | `north`, `south`, `east`, `west` |
| `internet_service` | category | `dsl`, `fiber`, `none` |
| `churned` | 0/1 | the classification label (`target="churned"`, the default) |
| `monthly_spend` | float | the regression label, instead of `churned` when `target="monthly_spend"` |

Labels carry real signal: churn rises with short tenure, month-to-month contracts, high
charges, support calls and electronic-check payment; spend depends on charges, products,
fiber internet and region.

"Production" data for monitoring demos:
- `shift` (in standard deviations for numeric features; for categorical ones a fraction
  `0.25 * shift` of rows moves to the feature's rarest category) applied to `shift_features`
  (default `monthly_charges`, `support_calls`, `contract`): covariate shift;
- `concept_drift` in [0, 1] blends the label's dependence on the features towards a
  different rule (age and region matter, contract and payment no longer do): the same
  inputs get different labels;
- `labels=False` leaves out the label column (what a serving endpoint sees).
The same `seed` gives the same rows, whatever the options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from workloads.errors import UsageError

if TYPE_CHECKING:
    from workloads.environment import Environment
    from workloads.settings import GenerateSettings

Target = Literal["churned", "monthly_spend"]

NUMERIC = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "age", "num_products"]
CATEGORIES: dict[str, list[str]] = {
    "contract": ["month-to-month", "one-year", "two-year"],
    "payment_method": ["electronic-check", "mailed-check", "bank-transfer", "credit-card"],
    "region": ["north", "south", "east", "west"],
    "internet_service": ["dsl", "fiber", "none"],
}
_CATEGORY_P = {
    "contract": [0.55, 0.25, 0.20],
    "payment_method": [0.35, 0.20, 0.25, 0.20],
    "region": [0.30, 0.25, 0.25, 0.20],
    "internet_service": [0.35, 0.45, 0.20],
}
DEFAULT_SHIFT_FEATURES = ["monthly_charges", "support_calls", "contract"]


def generate(
    n_rows: int,
    seed: int = 0,
    *,
    shift: float = 0.0,
    shift_features: list[str] | None = None,
    concept_drift: float = 0.0,
    labels: bool = True,
    target: Target = "churned",
) -> pd.DataFrame:
    """`n_rows` customers; see the module docstring for columns and options."""
    if n_rows < 1:
        raise ValueError(f"n_rows must be at least 1, got {n_rows}")
    if not 0.0 <= concept_drift <= 1.0:
        raise ValueError(f"concept_drift must be within [0, 1], got {concept_drift}")
    if target not in ("churned", "monthly_spend"):
        raise ValueError(f"target must be 'churned' or 'monthly_spend', got {target!r}")
    features = DEFAULT_SHIFT_FEATURES if shift_features is None else shift_features
    unknown = sorted(set(features) - set(NUMERIC) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown shift feature(s) {unknown}; choose from {NUMERIC + list(CATEGORIES)}")

    # Separate streams per purpose, so switching options (shift, labels) never changes the
    # other columns for the same seed.
    base, shifter, labeler = (np.random.default_rng([seed, k]) for k in range(3))
    df = _features(base, n_rows)
    if shift:
        _apply_shift(df, shifter, shift, features)
    if labels:
        if target == "churned":
            df["churned"] = _churn(df, labeler, concept_drift)
        else:
            df["monthly_spend"] = _spend(df, labeler, concept_drift)
    return df


def _features(rng: np.random.Generator, n: int) -> pd.DataFrame:
    tenure = np.clip(rng.exponential(24, n), 0, 72).round().astype("int64")
    charges = np.clip(rng.normal(65, 25, n), 18, 130).round(2)
    total = (tenure * charges * rng.normal(1.0, 0.05, n)).round(2)
    df = pd.DataFrame(
        {
            "customer_id": [f"c{i:08d}" for i in range(n)],
            "tenure_months": tenure,
            "monthly_charges": charges,
            "total_charges": total,
            "support_calls": rng.poisson(1.5, n).astype("int64"),
            "age": np.clip(rng.normal(45, 15, n), 18, 85).round(),
            "num_products": rng.integers(1, 6, n).astype("int64"),
        }
    )
    for name, values in CATEGORIES.items():
        df[name] = rng.choice(values, n, p=_CATEGORY_P[name])
    # Missing values, like a real CRM export: total charges not yet billed, age not given, ...
    for name, rate in (("total_charges", 0.02), ("age", 0.03), ("payment_method", 0.02)):
        mask = rng.random(n) < rate
        df[name] = df[name].where(~mask)
    return df


def _apply_shift(df: pd.DataFrame, rng: np.random.Generator, shift: float, features: list[str]) -> None:
    n = len(df)
    for name in features:
        if name in CATEGORIES:
            rarest = CATEGORIES[name][int(np.argmin(_CATEGORY_P[name]))]
            move = rng.random(n) < min(0.25 * abs(shift), 1.0)
            df.loc[move & df[name].notna(), name] = rarest
            continue
        col = df[name]
        delta = shift * float(col.std(skipna=True) or 1.0)
        if pd.api.types.is_integer_dtype(col):
            df[name] = np.clip(col + round(delta), 0, None).astype("int64")
        else:
            df[name] = col + delta


def _churn_logit(df: pd.DataFrame, concept_drift: float) -> np.ndarray:
    tenure = df["tenure_months"].to_numpy(float)
    charges = df["monthly_charges"].to_numpy(float)
    calls = df["support_calls"].to_numpy(float)
    age = df["age"].fillna(45).to_numpy(float)
    original = (
        -1.2
        - 0.05 * tenure
        + 0.025 * (charges - 65)
        + 0.45 * calls
        + np.select([df["contract"] == "month-to-month", df["contract"] == "one-year"], [1.3, 0.0], -1.0)
        + 0.8 * (df["payment_method"] == "electronic-check").to_numpy(float)
    )
    drifted = (
        -1.0
        + 0.06 * (age - 45)
        + 1.2 * df["region"].isin(["south", "west"]).to_numpy(float)
        - 0.3 * calls
        - 0.01 * (charges - 65)
    )
    return (1 - concept_drift) * original + concept_drift * drifted


def _churn(df: pd.DataFrame, rng: np.random.Generator, concept_drift: float) -> np.ndarray:
    p = 1 / (1 + np.exp(-_churn_logit(df, concept_drift)))
    return (rng.random(len(df)) < p).astype("int64")


def _spend(df: pd.DataFrame, rng: np.random.Generator, concept_drift: float) -> np.ndarray:
    charges = df["monthly_charges"].to_numpy(float)
    products = df["num_products"].to_numpy(float)
    fiber = (df["internet_service"] == "fiber").to_numpy(float)
    region = df["region"].map({"north": 5.0, "south": -3.0, "east": 0.0, "west": 8.0}).to_numpy(float)
    original = 1.1 * charges + 6.0 * products + 12.0 * fiber + region
    drifted = 0.7 * charges + 15.0 * products - 5.0 * fiber - region
    spend = (1 - concept_drift) * original + concept_drift * drifted + rng.normal(0, 6.0, len(df))
    return np.round(spend, 2)


def write_sample(settings: GenerateSettings, env: Environment | None) -> tuple[str, int, int]:
    """Generate per `GenerateSettings` and write to a local file or an s3:// URI; (where, rows, columns).

    `env` is the environment whose store an s3:// OUT (with stack placeholders) names; a local
    file needs none.
    """
    from workloads.data import dataset
    from workloads.training.spec import format_uri

    features = [f.strip() for f in settings.shift_features.split(",") if f.strip()] \
        if settings.shift_features else None
    try:
        df = generate(settings.rows, settings.seed, shift=settings.shift, shift_features=features,
                      concept_drift=settings.concept_drift, labels=settings.labels, target=settings.target)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    destination = settings.out
    if destination.startswith("s3://"):
        if env is None:
            raise UsageError(f"OUT {destination!r}: writing to S3 needs an environment")
        destination = format_uri(destination, env.outputs, "OUT")
    return dataset.write(df, destination, env), len(df), len(df.columns)
