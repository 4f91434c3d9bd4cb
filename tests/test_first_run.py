"""What a newcomer's first run shows is true.

* QUICKSTART's verification checklist against what `make demo` prints: the demo's own commands
  (read from the Makefile's ``demo`` recipe) run through the scripts' ``main()`` on a smaller
  sample in a temporary folder; every count the checklist states is compared with the output,
  scaled from the small images to the demo's 2048x2048 ones where it depends on the area.
* The hints a first run meets: a query on objects before the objects step, the reference
  cross-match without a reference, an S3 endpoint that cannot be reached.
* The notebook's light-curve survey stays out of `make demo`'s inputs.
"""

from __future__ import annotations

import re
import shlex
import socket

import numpy as np
import pandas as pd
import pytest
from conftest import load_script

from skysurvey import plots, report
from skysurvey.config import REPO_ROOT
from skysurvey.queries import NAMED_QUERIES

DEMO_SIZE = 2048  # what `make demo` draws (download_sample_fits.py's default)
SMALL = 1024  # what this test draws: a quarter of the area


def _demo_commands() -> list[tuple[dict, str, list[str]]]:
    """``(environment, script, argv)`` of each `make demo` step, from the Makefile."""
    lines = (REPO_ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    steps = []
    for line in lines.splitlines()[1:]:
        words = shlex.split(line.strip())
        if not words or words[0].startswith("@"):
            continue
        env = dict(w.split("=", 1) for w in words if re.fullmatch(r"[A-Z_]+=\S+", w))
        words = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S+", w)]
        assert words[0] == "$(BIN)/python" and words[1].startswith("scripts/"), line
        steps.append((env, words[1].removeprefix("scripts/").removesuffix(".py"), words[2:]))
    return steps


def _checklist() -> dict[int, str]:
    """QUICKSTART's verification checklist, item number -> text (one line)."""
    text = (REPO_ROOT / "QUICKSTART.md").read_text()
    section = text.split("### Verification checklist", 1)[1].split("\n###", 1)[0]
    section = section.split("\nThen the notebook", 1)[0]
    items = re.split(r"\n(\d)\. ", "\n" + section)
    return {int(n): " ".join(body.split()) for n, body in zip(items[1::2], items[2::2],
                                                                 strict=True)}


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _near(stated: float, measured: float, tolerance: float) -> bool:
    return abs(measured - stated) <= tolerance * stated


@pytest.mark.slow
def test_quickstart_checklist_is_what_make_demo_prints(tmp_path, monkeypatch, capsys):
    sample = tmp_path / "sample"
    monkeypatch.setenv("BUCKET_RAW", str(tmp_path / "raw"))
    monkeypatch.setenv("BUCKET_CATALOG", str(tmp_path / "catalog"))
    output = tmp_path / "output"
    printed: dict[str, list[tuple[str, str]]] = {}
    scale = (DEMO_SIZE / SMALL) ** 2

    def run(script, argv, env=()):
        module = load_script(script)
        if hasattr(module, "OUTPUT_DIR"):  # data/output/ of this run
            monkeypatch.setattr(module, "OUTPUT_DIR", output)
        with monkeypatch.context() as m:
            for key, value in dict(env).items():
                m.setenv(key, value)
            assert module.main(argv) == 0, (script, argv)
        out = capsys.readouterr()
        printed.setdefault(script, []).append((out.out, out.err))
        return out.out, out.err

    steps = _demo_commands()
    assert [s for _, s, _ in steps] == ["download_sample_fits", "upload_to_s3", "invoke_lambda",
                                        "build_objects", "forced_photometry",
                                        "query_with_athena",
                                        "query_with_athena", "plot_catalog"]
    for env, script, argv in steps:
        argv = [a.replace("data/sample", str(sample)) for a in argv]
        env = {k: v.replace("data/sample", str(sample)) for k, v in env.items()}
        if script == "download_sample_fits":
            assert "--size" not in argv
            argv += ["--size", str(SMALL)]
        run(script, argv, env)
    again_out, _ = run("upload_to_s3", ["--input", str(sample)])
    check = _checklist()
    own_sql = shlex.split(re.search(r"`(python scripts/query_with_athena\.py [^`]+)`",
                                    check[7]).group(1))
    sql_out, _ = run("query_with_athena", own_sql[2:])
    images = plots.read_catalog(tmp_path / "catalog", "images")
    sources = plots.read_catalog(tmp_path / "catalog")

    # 1. images: six files, their size at 2048 px, stars and galaxies drawn into each
    gen_out, gen_err = printed["download_sample_fits"][0]
    fits = sorted(sample.glob("*.fits"))
    n_images = int(re.search(r"a table of (\w+) files `sky_<band>_<NNN>\.fits`",
                             check[1]).group(1).replace("six", "6"))
    assert len(fits) == n_images == 6
    assert all(re.search(rf"^{f.name}\s+[gri]\s+\d+\s+\d+", gen_out, re.M) for f in fits)
    assert gen_err.count("] sky_") == 6  # one progress line per image
    header_bytes = fits[0].stat().st_size - SMALL * SMALL * 4
    megabytes = (DEMO_SIZE * DEMO_SIZE * 4 + header_bytes) / 1e6
    stated_mb = _number(re.search(r"\(g, r, i; ([\d.]+) MB each", check[1]).group(1))
    assert stated_mb == round(megabytes, 1)
    stars, galaxies = (_number(x) for x in re.search(
        r"about ([\d,]+) stars and ([\d,]+) galaxies", check[1]).groups())
    truth = [pd.read_csv(sample / "truth" / f"{f.stem}.csv") for f in fits]
    assert _near(stars, scale * np.mean([(t["kind"] == "star").sum() for t in truth]), 0.15)
    assert _near(galaxies, scale * np.mean([(t["kind"] == "galaxy").sum() for t in truth]),
                 0.15)
    per_image = re.search(r"about ([\d,]+) of them are detected in each", check[1])
    assert _near(_number(per_image.group(1)), scale * images["n_sources"].mean(), 0.3)
    assert (sample / "reference.parquet").is_file()
    assert len(list((sample / "truth").glob("*.csv"))) == 6

    # 2. upload, and again
    stated = re.search(r"`(\d+) uploaded \(([\d.]+) MB\), 0 already there, 0 failed`", check[2])
    assert int(stated.group(1)) == 6 and _number(stated.group(2)) == round(6 * megabytes, 1)
    upload_out, _ = printed["upload_to_s3"][0]
    assert re.search(r"\b6 uploaded \([\d.]+ MB\), 0 already there, 0 failed", upload_out)
    second = re.search(r"all six are `already there` \(`([^`]+)`\)", check[2]).group(1)
    assert second == "0 uploaded (0.0 MB), 6 already there, 0 failed"
    assert second in again_out, again_out

    # 3. detection summary
    summary, _ = printed["invoke_lambda"][0]
    assert "`succeeded 6`, `failed 0`" in check[3]
    assert re.search(r"^succeeded\s+6$", summary, re.M) and re.search(r"^failed\s+0$", summary,
                                                                       re.M)
    n_sources = int(re.search(r"^sources\s+([\d,]+)$", summary, re.M).group(1).replace(",", ""))
    assert n_sources == len(sources)
    stated = _number(re.search(r"about ([\d,]+) sources", check[3]).group(1))
    assert _near(stated, scale * n_sources, 0.3), (stated, scale * n_sources)
    by_band = images.groupby("band")["n_sources"].mean().sort_values()
    assert (by_band.index[0], by_band.index[-1]) == ("g", "i")
    assert "g finds the fewest, i the most" in check[3]

    # 4. objects: counts, one association per source, seen in up to six images
    objects_out, _ = printed["build_objects"][0]
    new_objects = int(re.search(r"^new objects\s+([\d,]+)$", objects_out, re.M).group(1)
                      .replace(",", ""))
    associations = int(re.search(r"^associations\s+([\d,]+)$", objects_out, re.M).group(1)
                       .replace(",", ""))
    stated_objects, stated_assoc = (_number(x) for x in re.search(
        r"about ([\d,]+) new objects and ([\d,]+) associations", check[4]).groups())
    assert _near(stated_objects, scale * new_objects, 0.3), (stated_objects, new_objects)
    assert _near(stated_assoc, scale * associations, 0.3)
    assert associations == n_sources and "one per source" in check[4]
    facts = report.describe_images(images)
    assert (facts["pointings"], len(facts["nights"]), len(facts["bands"])) == (2, 2, 3)
    assert "two dithered pointings" in check[4] and "two nights" in check[4]
    objects = pd.read_parquet(tmp_path / "catalog" / "objects")
    assert objects["n_detections"].max() == 6 and "up to six images" in check[4]

    # 5. queries: total_sources equals the summary; one saved CSV per named query
    queries_out, _ = printed["query_with_athena"][0]
    total = re.search(r"== total_sources ==\n.*\n\s*(\d+)\s+(\d+)\s+(\d+)", queries_out)
    assert (int(total.group(1)), int(total.group(2))) == (n_sources, 6)
    assert "`total_sources` counts the same sources and images as the summary" in check[5]
    saved = re.findall(r"^saved (.+)/queries/(\d{8}T\d{6}Z)/(\w+)\.csv$", queries_out, re.M)
    assert sorted(name for *_, name in saved) == sorted(NAMED_QUERIES)
    assert {folder for folder, *_ in saved} == {str(output)}
    assert "`saved data/output/queries/<UTC time>/<query>.csv`" in check[5]

    # 6. plots and report
    plot_out, _ = printed["plot_catalog"][0]
    pngs = re.findall(r"^(.+)/plots/(\w+)\.png$", plot_out, re.M)
    stated_plots = re.search(r"under `data/output/plots/` \(([^)]*)\)", check[6]).group(1)
    assert len(pngs) == len(re.split(r", | and ", stated_plots)) == 10, (pngs, stated_plots)
    assert f"report: {output / 'report.html'}" in plot_out
    assert "`report: data/output/report.html`" in check[6]
    assert "a seeing near 1 arcsec" in check[6]
    assert images["fwhm_arcsec"].between(0.75, 1.25).all(), images["fwhm_arcsec"].tolist()
    assert "a zero point from the reference" in check[6]
    assert set(images["zero_point_source"]) == {"reference"}
    offset = _number(re.search(r"about \+([\d.]+) mag too faint", check[6]).group(1))
    matched = pd.concat([plots.match_to_truth(found, pd.read_csv(sample / "truth" /
                                                                  f"{image_id}.csv"))
                         for image_id, found in sources.groupby("image_id")])
    residual = (matched["mag"] - matched["true_mag"]).median()
    assert abs(residual - offset) < 0.02, residual

    # 7. your own SQL: three rows, g, i and r
    rows = re.findall(r"^\s*([a-z])\s+\d+$", sql_out, re.M)
    assert rows == ["g", "i", "r"] and "three rows, g, i and r" in check[7]


def _catalog_without_objects(tmp_path):
    """A catalogued image, no objects step yet."""
    from conftest import draw_fits

    from skysurvey.pipeline import catalog_image
    from skysurvey.storage import open_store

    raw = tmp_path / "raw"
    raw.mkdir()
    draw_fits(raw / "a.fits", size=96, n_stars=10, seed=3)
    assert catalog_image(open_store(raw), "a.fits", open_store(tmp_path / "cat"))["status"] \
        == "ok"
    return tmp_path / "cat"


def test_empty_answers_say_which_step_is_missing(tmp_path, capsys):
    catalog = str(_catalog_without_objects(tmp_path))
    script = load_script("query_with_athena")
    for argv in (["--sql", "SELECT * FROM objects"], ["--query", "variables"],
                 ["--query", "light_curve"]):
        assert script.main(["--catalog", catalog, *argv]) == 0
        out = capsys.readouterr().out
        assert "(no rows) the catalog has no objects table yet: run the objects step, " \
               "scripts/build_objects.py" in out, (argv, out)
        assert "nothing in the catalog matches" not in out
    load_script("build_objects").main(["--catalog", catalog])
    capsys.readouterr()
    # with objects built, no reference: the cross-match asks for one
    assert script.main(["--catalog", catalog, "--query", "crossmatch_reference"]) == 0
    out = capsys.readouterr().out
    assert "(no rows) no reference catalog" in out and "REFERENCE_CATALOG=" in out
    # objects there, a query that matches nothing: that is what it says
    assert script.main(["--catalog", catalog, "--sql",
                        "SELECT * FROM objects WHERE n_detections > 99"]) == 0
    assert "(no rows) nothing in the catalog matches this query." in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_s3_is_named_a_network_error_not_a_missing_catalog(monkeypatch, capsys):
    """Connection refused (nothing listens) and a TLS handshake with a plain-HTTP server."""
    import http.server
    import threading

    script = load_script("query_with_athena")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    assert script.main(["--catalog", "s3://survey/cat", "--query", "total_sources"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach S3, network or TLS error" in err and "no catalog here" not in err
    assert "invoke_lambda" not in err

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"https://127.0.0.1:{server.server_address[1]}")
        assert script.main(["--catalog", "s3://survey/cat", "--query", "total_sources"]) == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert "cannot reach S3, network or TLS error" in err and "SSL" in err
    assert "no catalog here" not in err


def test_total_sources_counts_an_image_without_sources(tmp_path):
    """9 images catalogued, one of them with no source: 9 images, not 8."""
    from skysurvey.queries import run_named

    catalog = _catalog_without_objects(tmp_path)
    from conftest import draw_fits

    from skysurvey.pipeline import catalog_image
    from skysurvey.storage import open_store

    draw_fits(tmp_path / "raw" / "blank.fits", size=96, n_stars=0, seed=4)
    assert catalog_image(open_store(tmp_path / "raw"), "blank.fits",
                         open_store(catalog))["n_sources"] == 0
    got = run_named("total_sources", str(catalog)).to_dict("records")
    n = len(plots.read_catalog(catalog))
    assert n > 0 and got == [{"total_sources": n, "total_images": 2, "bands": 1}]


def test_region_files_read_without_warnings(tmp_path):
    """The .reg header's comment line has no ';' (astropy-regions splits a line there and
    warned "ellipses ... is not a valid frame or region shape" on every file)."""
    import warnings

    catalog = _catalog_without_objects(tmp_path)
    out = tmp_path / "sources.reg"
    assert load_script("query_with_athena").main(
        ["--catalog", str(catalog), "--sql", "SELECT * FROM sources", "--output", str(out)]) == 0
    text = out.read_text()
    n = len(plots.read_catalog(catalog))
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert comments and not any(";" in line for line in comments), comments
    assert text.count("ellipse(") == n
    from regions import Regions  # astropy-regions, as users open the file

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        regions = Regions.read(out, format="ds9")
    assert len(regions) == n
