"""Shared fixtures: AWS isolation (moto in-process and as a real HTTP server).

Every test runs with fake AWS credentials and no profile, so nothing can reach a real account;
cached boto3 clients are dropped around each test (a client made outside moto escapes it).
"""

from __future__ import annotations

import pytest

from skysurvey import aws

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path_factory):
    """Fake credentials; no profile, endpoint or env file from the developer's machine."""
    for key, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "BUCKET_RAW", "BUCKET_CATALOG",
                "LAMBDA_FUNCTION", "ATHENA_DATABASE", "ATHENA_WORKGROUP", "ATHENA_OUTPUT",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "REFERENCE_CATALOG", "REFERENCE_BANDS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SKYSURVEY_ENV_FILE", str(tmp_path_factory.mktemp("env") / "none.env"))
    aws.clear_clients()
    yield
    aws.clear_clients()


@pytest.fixture
def mocked_aws():
    """moto in-process: patches boto3 only (not pyarrow or DuckDB)."""
    from moto import mock_aws

    with mock_aws():
        aws.clear_clients()
        yield
    aws.clear_clients()


@pytest.fixture(scope="session")
def _moto_server():
    from moto.server import ThreadedMotoServer

    # Port 0: the OS picks a free port while binding (no race with other test runs).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server._server.server_address[:2]
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_server(_moto_server, monkeypatch):
    """A real HTTP moto server on loopback, reached through AWS_ENDPOINT_URL (state reset)."""
    import urllib.request

    urllib.request.urlopen(
        urllib.request.Request(f"{_moto_server}/moto-api/reset", method="POST")
    ).read()
    monkeypatch.setenv("AWS_ENDPOINT_URL", _moto_server)
    aws.clear_clients()
    yield _moto_server
    aws.clear_clients()


def draw_fits(path, *, size: int = 128, n_stars: int = 12, seed: int = 0, band: str = "r",
              date_obs: str = "2026-03-14T04:12:00", sigma: float = 1.5, sky: float = 100.0,
              gain: float = 2.0):
    """A small self-contained test image: Gaussian stars on Poisson sky with a TAN WCS.

    Returns the truth as a list of ``(x, y, flux)`` (0-based pixels). The generator in
    ``skysurvey.synth`` makes realistic fields; this one is for tests of the plumbing, where an
    image must be tiny and its contents obvious.
    """
    import numpy as np
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(seed)
    margin = 10
    xs = rng.uniform(margin, size - margin, n_stars)
    ys = rng.uniform(margin, size - margin, n_stars)
    fluxes = rng.uniform(5e3, 5e4, n_stars)
    yy, xx = np.mgrid[:size, :size]
    model = np.full((size, size), sky)
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        model += f / (2 * np.pi * sigma**2) * np.exp(-r2 / (2 * sigma**2))
    data = (rng.poisson(model * gain) / gain).astype(np.float32)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.2]
    wcs.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    wcs.wcs.cdelt = [-0.25 / 3600, 0.25 / 3600]
    header = wcs.to_header()
    header.update(FILTER=band, EXPTIME=60.0, GAIN=gain, MAGZERO=30.0, TELESCOP="TEST",
                  **{"DATE-OBS": date_obs})
    fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
    return list(zip(xs.tolist(), ys.tolist(), fluxes.tolist(), strict=True))


@pytest.fixture
def fits_factory():
    """``fits_factory(path, **kw)`` draws a small image (see :func:`draw_fits`)."""
    return draw_fits


def load_script(name: str):
    """The module of the step ``scripts/<name>.py`` runs: ``skysurvey.steps.<name>`` when the
    step lives in the package (the script is its few-line entry point), else the script itself
    imported as a module (the handler, the Lambda package builder)."""
    import importlib
    import importlib.util
    import sys

    from skysurvey.config import REPO_ROOT

    try:
        return importlib.import_module(f"skysurvey.steps.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"skysurvey.steps.{name}":
            raise

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class RawBody:
    """A raw HTTP body for ``botocore.awsrequest.AWSResponse`` (faults injected on the wire)."""

    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **kwargs):
        yield self.body

    def read(self, *args):
        return self.body


def two_night_survey(root):
    """``(raw, catalog)`` under *root*: a synthetic survey of two nights in one band,
    256 x 256, with two transients, catalogued and associated locally (no forced photometry)."""
    from skysurvey.objects import build_objects
    from skysurvey.runner import run_local
    from skysurvey.synth_survey import write_survey

    raw, catalog = root / "raw", root / "cat"
    paths = write_survey(raw, nights=2, bands=("r",), size=256, n_transients=2, seed=5)
    replies = run_local(str(raw), [p.name for p in paths], str(catalog), workers=1)
    assert all(r["status"] == "ok" for r in replies), replies
    build_objects(str(catalog))
    return raw, catalog


def upload_survey(raw, catalog):
    """Copy a local survey (:func:`two_night_survey`) to the moto server's buckets: the FITS
    files under ``s3://raw/images/``, the catalog's files (not staging or hidden) to
    ``s3://cat``. Returns the two stores."""
    from skysurvey import aws
    from skysurvey.storage import open_store

    s3 = aws.client("s3")
    for bucket in ("raw", "cat"):
        s3.create_bucket(Bucket=bucket)
    raw_store, cat_store = open_store("s3://raw/images"), open_store("s3://cat")
    for path in raw.glob("*.fits"):
        raw_store.upload_file(path, path.name)
    for path in catalog.rglob("*"):
        if path.is_file() and not path.name.startswith(".") and ".objects-staging" not in str(
                path):
            cat_store.upload_file(path, str(path.relative_to(catalog)))
    return raw_store, cat_store
