"""AWS list prices: one dict, read by the cost estimate (cost.py), the guides' table and the
cost of each Athena query (athena.py), so none of them can disagree.

List prices for us-east-1, x86, checked 2026-11 (https://aws.amazon.com/lambda/pricing/,
/s3/pricing/, /athena/pricing/, /cloudwatch/pricing/).
"""

from __future__ import annotations

__all__ = ["PRICES", "athena_query_usd"]

PRICES = {
    "lambda_gb_second": 0.0000166667,
    "lambda_request": 0.20 / 1e6,
    "s3_gb_month": 0.023,
    "s3_put": 0.005 / 1000,
    "s3_get": 0.0004 / 1000,
    "athena_tb": 5.0,
    "athena_min_bytes": 10 * 2**20,
    "logs_gb": 0.50,
}


def athena_query_usd(bytes_scanned: float) -> float:
    """Athena's price for one query: ``athena_tb`` per TB (2**40 bytes) scanned, billed for at
    least ``athena_min_bytes`` (10 MB). :func:`skysurvey.athena.cost_usd` reports this."""
    return max(bytes_scanned, PRICES["athena_min_bytes"]) / 2**40 * PRICES["athena_tb"]
