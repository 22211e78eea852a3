"""Seeded card-transaction data for fraud detection, the bundled example.

The data looks like what a card issuer has: a timestamp, the amount, the merchant's
category, the channel, the country, the customer's age (sometimes unknown), the distance
from home (often unknown for online payments), the card's recent activity, and a rare
fraud label (about 2%). Fraud depends on the features through a fixed logistic model, so a
good model can learn it and a bad one cannot.

`drift` (0 to 1) moves the world away from the training data, for the monitoring issue:
amounts grow, online payments take over, a new merchant category appears, and fraud
shifts towards night-time online payments.

    python examples/fraud/generate.py --rows 20000 --out examples/fraud/data/transactions.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

MERCHANTS = ["grocery", "fuel", "restaurant", "travel", "electronics", "fashion", "pharmacy",
             "gaming", "jewelry", "utilities", "entertainment", "cash_advance"]
MERCHANT_RISK = dict(zip(MERCHANTS, [-0.6, -0.3, -0.4, 0.5, 0.9, 0.2, -0.5, 1.1, 1.3, -0.8, 0.0, 1.0]))
CHANNELS = ["pos", "online", "atm"]
COUNTRIES = ["US", "GB", "DE", "FR", "ES", "NL", "BR", "NG", "RU", "CN"]
COUNTRY_P = [0.55, 0.12, 0.08, 0.07, 0.05, 0.04, 0.03, 0.02, 0.02, 0.02]
COUNTRY_RISK = dict(zip(COUNTRIES, [-0.3, -0.2, -0.2, -0.1, 0.0, -0.1, 0.6, 1.2, 1.0, 0.7]))
#: How strongly the features drive fraud, and the base rate's log-odds: about 2% fraud, ROC-AUC about 0.9.
SIGNAL, INTERCEPT = 2.0, -7.6


def generate(rows: int = 20_000, *, seed: int = 7, drift: float = 0.0,
             start: str = "2026-01-01", days: int = 180) -> pd.DataFrame:
    """Return `rows` transactions; the same arguments always give the same frame."""
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift: expected a number from 0 to 1, found {drift}")
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start)
    seconds = np.sort(rng.integers(0, days * 86_400, rows))
    ts = t0 + pd.to_timedelta(seconds, unit="s")
    hour = ts.hour.to_numpy()

    channel_p = np.array([0.6, 0.3, 0.1]) * (1 - drift) + np.array([0.25, 0.7, 0.05]) * drift
    channel = rng.choice(CHANNELS, rows, p=channel_p / channel_p.sum())
    merchants = MERCHANTS + (["crypto_exchange"] if drift > 0 else [])
    merchant_p = np.ones(len(merchants))
    if drift > 0:
        merchant_p[-1] = 4 * drift
    merchant = rng.choice(merchants, rows, p=merchant_p / merchant_p.sum())
    country = rng.choice(COUNTRIES, rows, p=COUNTRY_P)
    amount = np.round(rng.lognormal(mean=3.4 + 0.8 * drift, sigma=1.1, size=rows), 2)
    customer_age = rng.normal(44, 14, rows).clip(18, 95).round()
    account_age_days = rng.gamma(2.0, 600, rows).round()
    tx_last_24h = rng.poisson(2.0, rows)
    distance_km = rng.exponential(25, rows).round(1)

    risk = INTERCEPT + SIGNAL * (
        0.55 * np.log1p(amount) - 0.55 * 3.4
        + np.array([MERCHANT_RISK.get(m, 1.5) for m in merchant])
        + np.array([COUNTRY_RISK[c] for c in country])
        + np.where(channel == "online", 0.8, np.where(channel == "atm", 0.4, -0.3))
        + 0.9 * ((hour < 5) | (hour >= 23))
        + 0.25 * np.minimum(tx_last_24h, 8)
        - 0.0006 * np.minimum(account_age_days, 2000)
        + 0.012 * np.minimum(distance_km, 200)
        + drift * 1.2 * ((channel == "online") & ((hour < 6) | (hour >= 22)))
    )
    is_fraud = (rng.random(rows) < 1 / (1 + np.exp(-risk))).astype(int)

    # Missing values, as real feeds have them.
    customer_age[rng.random(rows) < 0.04] = np.nan
    distance_km[(channel == "online") & (rng.random(rows) < 0.6)] = np.nan
    country = country.astype(object)
    country[rng.random(rows) < 0.01] = None

    return pd.DataFrame({
        "transaction_id": [f"tx-{seed}-{i:08d}" for i in range(rows)],
        "ts": ts,
        "amount": amount,
        "merchant_category": merchant,
        "channel": channel,
        "country": country,
        "customer_age": customer_age,
        "account_age_days": account_age_days,
        "tx_last_24h": tx_last_24h,
        "distance_from_home_km": distance_km,
        "is_fraud": is_fraud,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift", type=float, default=0.0, help="0 = like training, 1 = far away")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "transactions.parquet")
    args = parser.parse_args()
    frame = generate(args.rows, seed=args.seed, drift=args.drift)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    if args.out.suffix == ".csv":
        frame.to_csv(tmp, index=False)
    else:
        frame.to_parquet(tmp, index=False)
    tmp.replace(args.out)
    print(f"wrote {len(frame):,} rows ({frame.is_fraud.mean():.2%} fraud) to {args.out}")


if __name__ == "__main__":
    main()
