"""What a run costs on AWS, from image count, sizes and measured handler seconds.

The list prices are :data:`skysurvey.prices.PRICES` (one dict, so the guides' table, this
module and the query costs ``athena.py`` reports cannot disagree; tests/test_guides.py checks
the table).
"""

from __future__ import annotations

from dataclasses import dataclass

from .prices import PRICES, athena_query_usd

__all__ = [
    "BYTES_PER_PIXEL",
    "DEFAULT_MB_PER_IMAGE",
    "FITS_BLOCK",
    "Estimate",
    "MeasuredRun",
    "breakdown",
    "deployed_memory_mb",
    "estimate",
    "fits_mb",
    "mean_file_mb",
    "measured_run",
]

#: FITS size per image (MB = 10**6 bytes) when nothing better is known: a 2048 x 2048 image of
#: 32-bit pixels (what ``download_sample_fits.py`` writes by default). estimate_cost.py takes the
#: real size from --input (the files), --pixels, or the catalog's recorded image sizes instead.
DEFAULT_MB_PER_IMAGE = 16.8
FITS_BLOCK = 2880  # FITS files are made of 2880-byte blocks
BYTES_PER_PIXEL = 4  # 32-bit pixels (BITPIX -32 or 32), what the pipeline's images mostly are


def fits_mb(pixels: float, bytes_per_pixel: int = BYTES_PER_PIXEL) -> float:
    """MB (10**6 bytes) of an uncompressed FITS image of *pixels* pixels: one header block and
    the data padded to whole blocks (2048 x 2048 x 4 bytes: 16.8 MB).

    Parameters
    ----------
    pixels : float
        Width x height.
    bytes_per_pixel : int
        4 for BITPIX -32 or 32, 8 for -64, 2 for 16.

    Returns
    -------
    float
        Megabytes (10**6 bytes).
    """
    data = int(pixels * bytes_per_pixel)
    return (1 + -(-data // FITS_BLOCK)) * FITS_BLOCK / 1e6


def mean_file_mb(uri: str) -> tuple[float, int]:
    """``(mean MB, how many)`` of the FITS files under a folder or ``s3://`` prefix (the same
    files ``invoke_lambda.py --input`` would read); none at all is a StorageError.

    Parameters
    ----------
    uri : str
        A local folder or ``s3://bucket[/prefix]``.

    Returns
    -------
    mean_mb : float
        Mean file size, MB (10**6 bytes).
    n : int
        Number of FITS files.

    Raises
    ------
    StorageError
        No FITS file under *uri*.
    """
    from .errors import StorageError
    from .schema import is_fits_name
    from .storage import open_store

    sizes = [o.size for o in open_store(uri).list() if is_fits_name(o.key)]
    if not sizes:
        raise StorageError(str(uri), "no FITS files (.fits, .fit, .fts, with .gz, .bz2 or .fz)")
    return sum(sizes) / len(sizes) / 1e6, len(sizes)


@dataclass(frozen=True)
class Estimate:
    images: int
    lambda_gb_seconds: float
    lambda_usd: float
    s3_usd: float
    athena_usd: float
    logs_usd: float

    @property
    def total_usd(self) -> float:
        return self.lambda_usd + self.s3_usd + self.athena_usd + self.logs_usd


def estimate(images: int, *, mb_per_image: float = DEFAULT_MB_PER_IMAGE,
             seconds_per_image: float = 0.3,
             memory_mb: int = 1024, queries: int = 10, catalog_mb_per_image: float = 0.2,
             months: float = 1.0) -> Estimate:
    """A run's bill: Lambda (GB-s and requests), S3 storage and requests, Athena, logs.

    The sums of :func:`breakdown`'s lines, so the two cannot disagree.

    Parameters
    ----------
    images : int
        Images processed.
    mb_per_image : float
        Raw image size, MB (stored in S3).
    seconds_per_image : float
        Lambda handler time per image, s.
    memory_mb : int
        The function's memory (GB-seconds are billed at it).
    queries : int
        Athena queries run.
    catalog_mb_per_image : float
        Catalog Parquet per image, MB (stored, and scanned by the queries).
    months : float
        How long everything stays stored.

    Returns
    -------
    Estimate
        Lambda GB-seconds and the USD of Lambda, S3, Athena and logs (``total_usd``).
    """
    usd = {service: usd for service, _, usd in breakdown(
        images, mb_per_image=mb_per_image, seconds_per_image=seconds_per_image,
        memory_mb=memory_mb, queries=queries, catalog_mb_per_image=catalog_mb_per_image,
        months=months)}
    return Estimate(images, images * seconds_per_image * memory_mb / 1024,
                    usd["Lambda invocations"] + usd["Lambda compute"],
                    usd["S3 storage"] + usd["S3 requests"], usd["Athena"],
                    usd["CloudWatch Logs"])


#: Requests one image costs (tests/test_requests.py counts them): the upload and the catalog's
#: entry, sources and image record; reading the raw image (boto3's download: HEAD + GET), the
#: entry before and after writing, and the record at the new keys the first time.
PUTS_PER_IMAGE, GETS_PER_IMAGE = 4, 5


def breakdown(images: int, *, mb_per_image: float = DEFAULT_MB_PER_IMAGE,
              seconds_per_image: float = 0.3,
              memory_mb: int = 1024, queries: int = 10, catalog_mb_per_image: float = 0.2,
              months: float = 1.0) -> list[tuple[str, str, float]]:
    """A run's bill line by line: ``(service, quantity, usd)`` (:func:`estimate` sums them).

    Data transfer is listed at $0: uploads into S3 are free, and S3 to Lambda and Athena stay
    in the region; what you download (query results, a few kB) is far inside the free 100 GB
    of transfer out per month.
    """
    gb_seconds = images * seconds_per_image * memory_mb / 1024
    stored_gb = images * (mb_per_image + catalog_mb_per_image) / 1024
    scanned = max(images * catalog_mb_per_image * 2**20 * 0.3, PRICES["athena_min_bytes"])
    log_bytes = images * 600
    return [
        ("S3 storage", f"{stored_gb:,.3f} GB for {months:g} month",
         stored_gb * PRICES["s3_gb_month"] * months),
        ("S3 requests", f"{images * PUTS_PER_IMAGE:,} PUT + {images * GETS_PER_IMAGE:,} GET",
         images * (PUTS_PER_IMAGE * PRICES["s3_put"] + GETS_PER_IMAGE * PRICES["s3_get"])),
        ("Lambda invocations", f"{images:,} requests", images * PRICES["lambda_request"]),
        ("Lambda compute", f"{gb_seconds:,.2f} GB-s ({seconds_per_image:g} s at {memory_mb} MB)",
         gb_seconds * PRICES["lambda_gb_second"]),
        ("Athena", f"{queries} queries x {scanned / 2**20:,.0f} MB scanned (10 MB minimum)",
         queries * athena_query_usd(scanned)),
        ("CloudWatch Logs", f"{log_bytes / 1e3:,.1f} kB ingested",
         log_bytes / 2**30 * PRICES["logs_gb"]),
        ("Data transfer", "in: free; out: query results, kB", 0.0),
    ]


@dataclass(frozen=True)
class MeasuredRun:
    images: int
    handler_seconds: float  # sum of images.seconds (what Lambda bills, to the millisecond)
    mean_pixels: float | None = None  # mean width x height of the recorded images (None: unknown)


def measured_run(catalog_uri: str) -> MeasuredRun:
    """Image count and total handler seconds of the run recorded in the catalog's ``images``.

    Parameters
    ----------
    catalog_uri : str
        The catalog (local folder or ``s3://`` URI).

    Returns
    -------
    MeasuredRun
        Images, summed handler seconds, mean pixels per image (None when not recorded).
    """
    from .queries import run_query

    df = run_query("SELECT count(*) AS n, coalesce(sum(seconds), 0) AS s, "
                   "avg(CAST(width AS DOUBLE) * CAST(height AS DOUBLE)) AS px FROM images",
                   catalog_uri)
    try:
        pixels = float(df["px"][0])
    except (TypeError, ValueError):  # NULL (no width/height recorded)
        pixels = None
    pixels = None if pixels is None or pixels != pixels or pixels <= 0 else pixels  # NaN
    return MeasuredRun(int(df["n"][0]), float(df["s"][0]), pixels)


def deployed_memory_mb(function: str) -> int:
    """The memory size of the deployed function (what its GB-seconds are billed at).

    Parameters
    ----------
    function : str
        The Lambda function's name or ARN.

    Returns
    -------
    int
        Memory, MB.

    Raises
    ------
    ConfigError or StorageError
        The function cannot be read (no credentials, no such function, access denied).
    """
    from . import aws

    try:
        config = aws.client("lambda").get_function_configuration(FunctionName=function)
    except aws.botocore_errors() as exc:
        raise aws.translate(exc, f"Lambda function {function}") from None
    return int(config["MemorySize"])
