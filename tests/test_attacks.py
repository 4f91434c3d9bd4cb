"""Hostile inputs (issue 23): nothing a user points us at is destroyed, nothing wrong is
reported as fine.

Each table below is one family of attacks: a row is the attack (its id), what it runs, and the
expected answer, either the one-line error (the input named, the cause) or the correct result.
To add an attack, add a row; the test under the table runs it.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from conftest import draw_fits, load_script

from skysurvey import hats_export
from skysurvey.handler import ImagesFailed
from skysurvey.hats_export import ExportError, check_output


def _tree(root: Path) -> dict[str, bytes]:
    """Every file below *root* and its bytes (what an attack must leave as it was)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------
# 1-4. export_hats.py --output: writers create only what they own (local folders)

@pytest.fixture
def catalog(tmp_path) -> Path:
    """A folder standing in for a catalog: the refusals come before anything is read."""
    root = tmp_path / "work" / "catalog"
    (root / "sources" / "band=r" / "night=2026-04-01").mkdir(parents=True)
    (root / "sources" / "band=r" / "night=2026-04-01" / "a.parquet").write_bytes(b"PAR1 data")
    (root / "images").mkdir()
    (root / "images" / "a.parquet").write_bytes(b"PAR1 record")
    return root


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    return path


def _user_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("notes")
    return path


HATS_OUTPUT_ATTACKS = [
    # (attack, output made from (tmp_path, catalog), expected in the one-line error)
    ("output is the catalog", lambda t, c: c, "is the catalog"),
    ("output is the catalog's parent", lambda t, c: c.parent, "contains the catalog"),
    ("output inside the catalog", lambda t, c: c / "hats", "lies inside the catalog"),
    ("output is the catalog via ..", lambda t, c: c / "sources" / "..", "is the catalog"),
    ("output is the file system root", lambda t, c: Path("/"), "contains the catalog"),
    ("output is an existing file", lambda t, c: _user_file(t / "notes.txt"),
     "is an existing file"),
    ("output holds the user's files", lambda t, c: _user_folder(t / "mine"),
     "non-empty folder this export did not make (holds thesis.tex)"),
    ("output below an existing file", lambda t, c: _user_file(t / "notes.txt") / "hats",
     "cannot be created: "),
]


@pytest.mark.parametrize("attack, output, expected", HATS_OUTPUT_ATTACKS,
                         ids=[a[0] for a in HATS_OUTPUT_ATTACKS])
def test_export_hats_refuses_outputs_it_does_not_own(tmp_path, catalog, capsys, attack,
                                                     output, expected):
    out = output(tmp_path, catalog)
    before, root_before = _tree(tmp_path), sorted(os.listdir("/"))
    script = load_script("export_hats")
    assert script.main(["--catalog", str(catalog), "--output", str(out)]) == 1
    _one_error_line(capsys.readouterr().err, str(out), expected)
    assert _tree(tmp_path) == before  # nothing deleted, nothing added
    added = set(os.listdir("/")) - set(root_before)  # (others may write there meanwhile)
    assert not [n for n in added if "-new-" in n or "-old-" in n]  # no staging folder at /


def _built(tmp_path: Path) -> Path:
    """What hats-import leaves in the export's work folder."""
    built = tmp_path / "built"
    for name in ("objects", "sources"):
        (built / name / "dataset").mkdir(parents=True)
        (built / name / "dataset" / "part.parquet").write_bytes(f"new {name}".encode())
        (built / name / "collection.properties").write_text(name)
    return built


def test_force_replaces_only_objects_and_sources_locally(tmp_path, catalog):
    out = _user_folder(tmp_path / "mine")
    (out / "objects").mkdir()
    (out / "objects" / "stale.parquet").write_bytes(b"old export")
    with pytest.raises(ExportError, match="non-empty folder"):
        check_output(str(catalog), str(out))
    check_output(str(catalog), str(out), force=True)
    hats_export._publish(_built(tmp_path), str(out))
    assert (out / "thesis.tex").read_text() == "three years of work"  # the user's file stays
    assert not (out / "objects" / "stale.parquet").exists()  # the old export's file goes
    assert (out / "objects" / "dataset" / "part.parquet").read_bytes() == b"new objects"
    assert (out / "sources" / "collection.properties").read_text() == "sources"
    assert sorted(p.name for p in out.iterdir()) == [hats_export.MARKER, "objects", "sources",
                                                     "thesis.tex"]
    check_output(str(catalog), str(out))  # marked as an export's folder: no --force next time


def test_a_killed_exports_staging_folders_are_its_own(tmp_path, catalog):
    out = tmp_path / "hats"
    (out / ".objects-new-abc123" / "dataset").mkdir(parents=True)  # killed mid-swap
    (out / ".sources-old-1765000000").mkdir()
    check_output(str(catalog), str(out))  # only an export's own leftovers: no --force
    hats_export._publish(_built(tmp_path), str(out))
    assert sorted(p.name for p in out.iterdir()) == [hats_export.MARKER, "objects", "sources"]


def test_a_new_or_empty_output_needs_no_force(tmp_path, catalog):
    (tmp_path / "empty").mkdir()
    check_output(str(catalog), str(tmp_path / "empty"))
    check_output(str(catalog), str(tmp_path / "new" / "hats"))
    hats_export._publish(_built(tmp_path), str(tmp_path / "new" / "hats"))
    assert sorted(p.name for p in (tmp_path / "new" / "hats").iterdir()) == [
        hats_export.MARKER, "objects", "sources"]


# 1-4 on s3://: the same rule, the same messages

S3_OUTPUT_ATTACKS = [
    ("s3 output is the catalog", "s3://survey/catalog", "is the catalog"),
    ("s3 output is the catalog's bucket", "s3://survey", "contains the catalog"),
    ("s3 output inside the catalog", "s3://survey/catalog/hats", "lies inside the catalog"),
    ("s3 output is an object", "s3://survey/notes.txt", "is an existing object"),
    ("s3 output holds the user's objects", "s3://survey/mine",
     "non-empty folder this export did not make (holds thesis.tex)"),
    ("s3 bucket holds the user's objects", "s3://other", "non-empty folder this export did "
                                                         "not make (holds mine)"),
]


@pytest.fixture
def survey_bucket(mocked_aws):
    s3 = boto3.client("s3", region_name="us-east-1")
    for bucket in ("survey", "other"):
        s3.create_bucket(Bucket=bucket)
    for bucket, key in (("survey", "catalog/images/a.parquet"), ("survey", "notes.txt"),
                        ("survey", "mine/thesis.tex"), ("other", "mine/thesis.tex")):
        s3.put_object(Bucket=bucket, Key=key, Body=b"user data")
    return s3


def _keys(s3, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


@pytest.mark.parametrize("attack, output, expected", S3_OUTPUT_ATTACKS,
                         ids=[a[0] for a in S3_OUTPUT_ATTACKS])
def test_s3_outputs_follow_the_same_rule(survey_bucket, attack, output, expected):
    with pytest.raises(ExportError) as info:
        check_output("s3://survey/catalog", output)
    assert str(info.value).startswith(f"{output}: ") and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_force_on_s3_replaces_only_objects_and_sources(survey_bucket, tmp_path):
    s3 = survey_bucket
    s3.put_object(Bucket="survey", Key="mine/objects/stale.parquet", Body=b"old export")
    check_output("s3://survey/catalog", "s3://survey/mine", force=True)
    hats_export._publish(_built(tmp_path), "s3://survey/mine")
    keys = _keys(s3, "survey")
    assert "mine/thesis.tex" in keys and "notes.txt" in keys  # the user's objects stay
    assert "mine/objects/stale.parquet" not in keys
    assert {"mine/objects/dataset/part.parquet", "mine/sources/collection.properties",
            f"mine/{hats_export.MARKER}"} <= keys
    check_output("s3://survey/catalog", "s3://survey/mine")  # ours now: no --force needed


# ---------------------------------------------------------------------------------------------
# 1-4 for query_with_athena.py --output / --output-dir: the same rule

QUERY_OUTPUT_ATTACKS = [
    # (attack, flags made from (tmp_path, catalog), expected in the one-line error)
    ("--output is a folder", lambda t, c: ["--output", str(_user_folder(t / "d.csv"))],
     "is a folder"),
    ("--output is a folder, with --force",
     lambda t, c: ["--output", str(_user_folder(t / "d.csv")), "--force"], "is a folder"),
    ("--output inside the catalog",
     lambda t, c: ["--output", str(c / "sources" / "x.parquet"), "--force"],
     "lies inside the catalog"),
    ("--output-dir is the catalog", lambda t, c: ["--query", "all", "--output-dir", str(c)],
     "lies inside the catalog"),
    ("--output-dir is a file",
     lambda t, c: ["--query", "all", "--output-dir", str(_user_file(t / "f.txt"))],
     "is an existing file"),
]


@pytest.mark.parametrize("attack, flags, expected", QUERY_OUTPUT_ATTACKS,
                         ids=[a[0] for a in QUERY_OUTPUT_ATTACKS])
def test_query_outputs_follow_the_same_rule(tmp_path, catalog, capsys, attack, flags, expected):
    argv = ["--catalog", str(catalog), *flags(tmp_path, catalog)]
    if "--query" not in argv:
        argv += ["--sql", "SELECT 1 AS one"]
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as info:
        load_script("query_with_athena").main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert expected in err
    assert _tree(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# 5, 15. The cone query: bad parameters are one line; a large radius errors, never 0 rows

@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """A catalog with objects: 30 stars over +-0.5 deg, seen on 2 nights."""
    from test_objects import jitter, stars, write_image

    from skysurvey.objects import build_objects

    root = tmp_path_factory.mktemp("survey")
    ra, dec = stars(30, seed=5, spread_arcsec=1800, min_sep=5)
    for k in range(2):
        write_image(root, f"n{k}", *jitter(ra, dec, k), mjd=61130.1 + k, size_deg=1.2)
    build_objects(str(root))
    return root


QUERY_PARAMETER_ATTACKS = [
    # (attack, named query, --param values, expected in the one-line error)
    ("radius 10 deg", "cone", ["150.1", "2.2", "36000"],
     "radius 36000.0 arcsec must be > 0 and at most"),
    ("radius 0", "cone", ["150.1", "2.2", "0"], "radius 0.0 arcsec must be > 0"),
    ("negative radius", "cone", ["150.1", "2.2", "-5"], "radius -5.0 arcsec must be > 0"),
    ("NaN radius", "cone", ["150.1", "2.2", "nan"], "radius nan arcsec must be > 0"),
    ("infinite radius", "cone", ["150.1", "2.2", "inf"], "radius inf arcsec"),
    ("dec 91", "cone", ["150.1", "91", "60"], "dec 91.0 is outside [-90, 90]"),
    ("dec NaN", "cone", ["150.1", "nan", "60"], "dec nan is outside [-90, 90]"),
    ("ra infinite", "cone", ["inf", "2.2", "60"], "ra inf is not a finite number"),
    ("two parameters", "cone", ["150.1", "2.2"],
     "expects 3 parameters (ra, dec, radius_arcsec), got 2"),
    ("four parameters", "cone", ["150.1", "2.2", "60", "1"], "got 4"),
    ("not a number", "cone", ["abc", "2.2", "60"], "parameters must be numbers"),
    ("negative match radius", "crossmatch_reference", ["-1"],
     "radius -1.0 arcsec must be > 0 and at most 3600"),
    ("match radius not a number", "crossmatch_reference", ["near"],
     "radius_arcsec must be a number, got 'near'"),
]


@pytest.mark.parametrize("attack, query, params, expected", QUERY_PARAMETER_ATTACKS,
                         ids=[a[0] for a in QUERY_PARAMETER_ATTACKS])
def test_query_parameters_are_checked(survey, capsys, attack, query, params, expected):
    argv = ["--catalog", str(survey), "--query", query]
    for value in params:
        argv += ["--param", value]
    assert load_script("query_with_athena").main(argv) == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, f"error: {query}: ", expected)
    assert "(no rows)" not in captured.out


@pytest.mark.parametrize("radius", [30.0, 600.0, 1800.0, 3600.0])
def test_cone_finds_every_object_within_the_radius(survey, radius):
    """Known answer: the exact distances of every object (brute force over the table)."""
    from skysurvey.queries import run_named, run_query

    everything = run_query("SELECT object_id, ra, dec FROM objects ORDER BY object_id",
                           str(survey))
    ra0, dec0 = everything["ra"][0] + 0.001, everything["dec"][0]  # 3.6" from an object
    d = np.radians
    sep = 2 * np.degrees(np.arcsin(np.sqrt(
        np.sin(d(everything["dec"] - dec0) / 2) ** 2 + np.cos(d(dec0))
        * np.cos(d(everything["dec"])) * np.sin(d(everything["ra"] - ra0) / 2) ** 2))) * 3600
    expected = set(everything["object_id"][sep <= radius])
    found = run_named("cone", str(survey), (ra0, dec0, radius))
    assert set(found["object_id"]) == expected
    assert len(expected) >= (1 if radius < 100 else 3)


# ---------------------------------------------------------------------------------------------
# 15, 16. Query results: exports of odd columns, regions from hostile ids, terminal escapes

QUERY_RESULT_ATTACKS = [
    # (attack, SQL, output suffix or None, expected status, expected in stdout/stderr/file)
    ("ESC bytes in an image id reach the terminal escaped",
     "SELECT chr(27) || '[2J' || 'field' AS image_id", None, 0,
     {"out": "\\x1b[2Jfield", "not out": "\x1b"}),
    ("newline in an image id cannot inject a region",
     "SELECT 'a' || chr(10) || 'circle(1,2,3)' AS image_id, 150.0 AS ra, 2.0 AS dec", ".reg", 0,
     {"file": "circle(150.0000000,2.0000000,1\") # text={a\\ncircle(1,2,3)}",
      "not file": "\ncircle(1,2,3)"}),
    ("a region file without any position is an error, not an empty file",
     "SELECT 'x' AS image_id, CAST(NULL AS DOUBLE) AS ra, CAST(NULL AS DOUBLE) AS dec", ".reg",
     1, {"err": "none of the 1 rows has a finite position", "no file": True}),
    ("an INTERVAL column exports to VOTable as seconds", "SELECT INTERVAL 3 DAY AS d", ".vot",
     0, {"table": ("d", 259200.0, "s")}),
    ("an INTERVAL column exports to FITS as seconds", "SELECT INTERVAL 1 HOUR AS d", ".fits",
     0, {"table": ("d", 3600.0, "s")}),
]


@pytest.mark.parametrize("attack, sql, suffix, status, expected", QUERY_RESULT_ATTACKS,
                         ids=[a[0] for a in QUERY_RESULT_ATTACKS])
def test_query_results_are_written_and_shown_safely(survey, tmp_path, capsys, attack, sql,
                                                    suffix, status, expected):
    out = tmp_path / f"result{suffix}" if suffix else None
    argv = ["--catalog", str(survey), "--sql", sql] + (["--output", str(out)] if out else [])
    assert load_script("query_with_athena").main(argv) == status
    captured = capsys.readouterr()
    if "out" in expected:
        assert expected["out"] in captured.out and expected["not out"] not in captured.out
    if "file" in expected:
        text = out.read_text()
        assert expected["file"] in text and expected["not file"] not in text
        assert sum(line.startswith("circle(") for line in text.splitlines()) == 1
    if "err" in expected:
        _one_error_line(captured.err, str(out), expected["err"])
    if expected.get("no file"):
        assert not out.exists()
    if "table" in expected:
        from astropy.table import Table

        column, value, unit = expected["table"]
        table = Table.read(out)
        assert table[column][0] == value and str(table[column].unit) == unit


# ---------------------------------------------------------------------------------------------
# 15, 17. Command-line values with surprising meanings are refused at the command line

ARGUMENT_ATTACKS = [
    # (attack, script, argv, expected in the last line of stderr)
    ("--limit 0", "invoke_lambda", ["--limit", "0"],
     "argument --limit: must be a positive integer, not 0"),
    ("--limit -1", "invoke_lambda", ["--limit", "-1"],
     "argument --limit: must be a positive integer, not -1"),
    ("--max-memory-mb 0", "invoke_lambda", ["--max-memory-mb", "0"],
     "argument --max-memory-mb: must be a positive integer, not 0"),
    ("--max-memory-mb -5", "invoke_lambda", ["--max-memory-mb", "-5"],
     "argument --max-memory-mb: must be a positive integer, not -5"),
    ("--workers 0", "invoke_lambda", ["--workers", "0"],
     "argument --workers: must be a positive integer, not 0"),
    ("--limit x", "invoke_lambda", ["--limit", "x"], "argument --limit: 'x' is not an integer"),
    ("a band mapped twice", "invoke_lambda",
     ["--reference", "ref.csv", "--reference-bands", "g=gmag,g=rmag"],
     "reference band 'g' is mapped twice (gmag and rmag)"),
    ("--radius inf", "build_objects", ["--rebuild", "--radius", "inf"],
     "argument --radius: must be a positive finite number"),
    ("--radius nan", "build_objects", ["--radius", "nan"],
     "argument --radius: must be a positive finite number"),
    ("--radius 3600", "build_objects", ["--radius", "3600"],
     "argument --radius: must be at most 30 arcsec"),
]


@pytest.mark.parametrize("attack, script, argv, expected", ARGUMENT_ATTACKS,
                         ids=[a[0] for a in ARGUMENT_ATTACKS])
def test_surprising_arguments_are_refused(tmp_path, capsys, attack, script, argv, expected):
    argv = [*argv, "--catalog", str(tmp_path / "cat")]
    try:
        status = load_script(script).main(argv)
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1], err
    assert not (tmp_path / "cat").exists()


# ---------------------------------------------------------------------------------------------
# 8. Positions are never written from a WCS that cannot be trusted: null, flagged, warned

def _set_cards(path: Path, cards: dict[str, str]) -> None:
    """Put raw cards (``KEY = <text as written>``) into the primary header, bytes-level, so
    that values astropy refuses to write (NaN) can be planted."""
    raw = bytearray(path.read_bytes())
    end = raw.index(b"END" + b" " * 77)
    for key, text in cards.items():
        card = f"{key:<8}= {text:>20}".ljust(80).encode()
        at = raw.find(f"{key:<8}=".encode(), 0, end)
        if at >= 0 and at % 80 == 0:
            raw[at:at + 80] = card
        else:  # a new card where END was (the header has room in its last block)
            raw[end:end + 80] = card
            end += 80
            raw[end:end + 80] = b"END" + b" " * 77
    path.write_bytes(bytes(raw))


WCS_ATTACKS = [
    # (attack, raw cards, expected in images.warnings; None: a good WCS, positions kept)
    ("CRVAL1 = NaN", {"CRVAL1": "NaN"}, "unusable WCS (CRVAL1 = NaN is not a finite number)"),
    ("CRPIX2 is text", {"CRPIX2": "'middle'"}, "CRPIX2 = middle is not a finite number"),
    ("singular PC matrix", {"PC1_1": "1.0", "PC1_2": "1.0", "PC2_1": "1.0", "PC2_2": "1.0"},
     "unusable WCS (its PC/CD matrix is singular)"),
    ("zero CDELT", {"CDELT1": "0.0"}, "WCS ("),
    ("LONPOLE 175 rotates the field", {"LONPOLE": "175.0"},
     "unusable WCS (LONPOLE = 175.0 moves positions by up to"),
    ("LONPOLE 180 is the default: fine", {"LONPOLE": "180.0"}, None),
    ("LATPOLE is ignored by TAN: fine", {"LATPOLE": "30.0"}, None),
]


@pytest.mark.parametrize("attack, cards, expected", WCS_ATTACKS, ids=[a[0] for a in WCS_ATTACKS])
def test_untrustworthy_wcs_gives_null_positions_a_flag_and_a_warning(tmp_path, attack, cards,
                                                                    expected):
    from skysurvey.detect import BAD_WCS
    from skysurvey.pipeline import catalog_image
    from skysurvey.storage import LocalStore

    (tmp_path / "raw").mkdir()
    draw_fits(tmp_path / "raw" / "x.fits", seed=3)
    _set_cards(tmp_path / "raw" / "x.fits", cards)
    reply = catalog_image(LocalStore(tmp_path / "raw"), "x.fits", LocalStore(tmp_path / "cat"))
    assert reply["status"] == "ok" and reply["n_sources"] >= 8, reply
    sources = pq.read_table(next((tmp_path / "cat" / "sources").rglob("*.parquet")))
    image = pq.read_table(next((tmp_path / "cat" / "images").rglob("*.parquet"))).to_pylist()[0]
    flags = np.asarray(sources["flags"].to_pylist())
    if expected is None:
        assert sources["ra"].null_count == 0 and not (flags & BAD_WCS).any()
        assert abs(np.median(sources["ra"].to_numpy()) - 150.0) < 0.01
        assert not image["warnings"] or "WCS" not in image["warnings"]
        return
    assert sources["ra"].null_count == sources.num_rows == sources["dec"].null_count
    assert sources["_healpix_29"].null_count == sources.num_rows
    assert (flags & BAD_WCS).all()
    assert expected in image["warnings"] and "ra/dec null" in image["warnings"]
    assert image["has_wcs"] is False


# ---------------------------------------------------------------------------------------------
# 13. Lambda events: a malformed event is one error reply, never a crash or a write elsewhere

def _records(n: int) -> dict:
    return {"Records": [{"s3": {"bucket": {"name": "raw"}, "object": {"key": f"images/{i}.fits"}}}
                        for i in range(n)]}


EVENT_ATTACKS = [
    # (attack, event, expected in the reply's error)
    ("input_prefix is a number", {"bucket": "raw", "key": "images/x.fits", "input_prefix": 5},
     "'input_prefix' must be a non-empty string, not 5"),
    ("catalog_bucket climbs out with ..",
     {"bucket": "raw", "key": "images/x.fits", "catalog_bucket": "s3://bucket/../victim"},
     "'catalog_bucket' has a '..' segment"),
    ("key climbs out with ..", {"bucket": "raw", "key": "images/../../etc/x.fits"},
     "'key' has a '..' segment"),
    ("a URL-encoded .. in a notification", {"Records": [{"s3": {
        "bucket": {"name": "raw"}, "object": {"key": "images/%2E%2E/x.fits"}}}]},
     "'key' has a '..' segment"),
    ("a control character in the catalog",
     {"bucket": "raw", "key": "x.fits", "catalog_bucket": "s3://cat/a\nb"},
     "'catalog_bucket' holds a control character"),
    ("reference is a list", {"bucket": "raw", "key": "x.fits", "reference": ["a"]},
     "'reference' must be a non-empty string"),
    ("Records is not a list", {"Records": "x"}, "'Records' must be a non-empty list"),
    ("2,000 records in one event", _records(2000),
     "2000 records in one event, at most 10"),
]


@pytest.mark.parametrize("attack, event, expected", EVENT_ATTACKS,
                         ids=[a[0] for a in EVENT_ATTACKS])
def test_malformed_events_get_one_error_reply(tmp_path, monkeypatch, attack, event, expected):
    import time

    handler = load_script("lambda_function")
    monkeypatch.setenv("BUCKET_CATALOG", str(tmp_path / "cat"))
    start = time.perf_counter()
    reply = handler.lambda_handler(event)
    assert time.perf_counter() - start < 2  # refused before any image is read
    assert reply["status"] == "error" and reply["error"].startswith("bad event: ")
    assert expected in reply["error"] and "\n" not in reply["error"]
    assert not (tmp_path / "cat").exists()


def test_ten_records_still_run_each_image(tmp_path, monkeypatch):
    """The cap refuses only what cannot finish: ten records are ten replies."""
    handler = load_script("lambda_function")
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    event = {"Records": [{"s3": {"bucket": {"name": str(raw)},
                                 "object": {"key": f"images/{i}.fits"}}} for i in range(10)]}
    monkeypatch.setenv("BUCKET_CATALOG", str(tmp_path / "cat"))
    with pytest.raises(ImagesFailed) as failed:  # S3-triggered: failures raise (queue)
        handler.lambda_handler(event)
    keys, causes = str(failed.value).split(": ", 1)
    assert keys.split(", ") == [f"{i}.fits" for i in range(10)]
    assert causes.lower().count("no such") + causes.lower().count("not found") >= 10, causes


# ---------------------------------------------------------------------------------------------
# 14. An empty, truncated or foreign file in a table is one line naming it, everywhere

def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"zero bytes": b"", "truncated": data[: len(data) // 2],
                      "not Parquet": b"name,ra\nx,1\n"}[how])


PARQUET_ATTACKS = [
    # (table folder, damage); every one: the query, --repair and build_objects name the file
    (table, how) for table in ("sources", "images", "objects")
    for how in ("zero bytes", "truncated", "not Parquet")
]


@pytest.mark.parametrize("table, how", PARQUET_ATTACKS,
                         ids=[f"{how} in {table}" for table, how in PARQUET_ATTACKS])
def test_damaged_parquet_files_are_named_in_one_line(survey, tmp_path, capsys, table, how):
    import shutil

    root = tmp_path / "catalog"
    shutil.copytree(survey, root)
    victim = next(p for p in sorted((root / table).rglob("*.parquet"))
                  if not p.name.startswith("_"))  # a file the table's readers read
    _damage(victim, how)
    name = victim.name
    query = load_script("query_with_athena")
    for sql in ("SELECT count(*) AS n FROM sources", "SELECT count(*) AS n FROM objects"):
        assert query.main(["--catalog", str(root), "--sql", sql]) == 1
        _one_error_line(capsys.readouterr().err.replace("failed: custom", ""), name,
                        "unreadable Parquet file")
    if table == "objects":
        return  # build_objects.py's own check rebuilds a changed unit (tests/test_objects.py)
    assert load_script("invoke_lambda").main(["--repair", "--catalog", str(root)]) == 1
    captured = capsys.readouterr()
    assert f"unreadable {victim.relative_to(root).as_posix()} (" in captured.err
    assert "1 unreadable files left" in captured.out
    assert victim.exists() and victim.with_suffix("").name in {
        p.stem for p in (root / ("images" if table == "sources" else "sources")).rglob("*")}
    assert load_script("build_objects").main(["--catalog", str(root), "--workers", "1"]) == 1
    _one_error_line(capsys.readouterr().err, name, "unreadable Parquet file")


# ---------------------------------------------------------------------------------------------
# 12. Memory stays within the budget for every part of a file, the header included

_PRIMARY = (fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 2, "NAXIS1": 32, "NAXIS2": 32})
            .tostring(endcard=False, padding=False).encode())


def _history_bomb(path: Path) -> None:
    """3.9 million HISTORY cards (312 MB of header) in a ~1 MB .fits.gz, then a real image."""
    chunk = b"HISTORY " + b"x" * 72
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(_PRIMARY)
        for _ in range(39):
            out.write(chunk * 100_000)
        size = len(_PRIMARY) + 39 * 100_000 * 80
        out.write(b"END".ljust(80) + b" " * (-(size + 80) % 2880))
        out.write(np.random.default_rng(0).normal(size=(32, 32)).astype(">f4").tobytes())
        out.write(b"\0" * (-4096 % 2880))


def _endless_header(path: Path) -> None:
    """A header without END, followed by 4 GiB of spaces (blank cards): gzip members of 1 MiB
    of spaces each, so the file is small and quick to write."""
    spaces = gzip.compress(b" " * 2**20, compresslevel=9)
    with open(path, "wb") as out:
        out.write(gzip.compress(_PRIMARY))
        for _ in range(4096):
            out.write(spaces)


MEMORY_ATTACKS = [
    # (attack, writer, budget MB, expected in the one-line error)
    ("3.9 million HISTORY cards in a 1 MB .fits.gz", _history_bomb, 1000,
     "header of HDU 0 reaches"),
    ("a header without END and 4 GiB of spaces", _endless_header, 1000,
     "header of HDU 0 reaches"),
    ("the same with a 300 MB budget", _endless_header, 300, "memory budget of 300 MB"),
]

# the peak resident memory of this process alone (VmHWM: ru_maxrss would keep the parent's
# high-water mark across fork and exec)
_MEASURE = """
import sys
from skysurvey.fitsread import read_fits
from skysurvey.errors import SkySurveyError
try:
    read_fits(sys.argv[1], name=sys.argv[1], max_memory_bytes=int(sys.argv[2]) * 2**20)
    print("read")
except SkySurveyError as exc:
    print(exc)
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(int(status.split()[0]) // 1024)
"""


@pytest.mark.parametrize("attack, writer, budget, expected", MEMORY_ATTACKS,
                         ids=[a[0] for a in MEMORY_ATTACKS])
def test_headers_are_read_within_the_memory_budget(tmp_path, attack, writer, budget, expected):
    import subprocess
    import sys

    path = tmp_path / "bomb.fits.gz"
    writer(path)
    assert path.stat().st_size < 5 * 2**20  # deflate tops out at ~1032:1
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(path), str(budget)],
                          capture_output=True, text=True, timeout=120, check=True)
    message, peak_mb = done.stdout.strip().splitlines()
    assert message.startswith(f"{path}: ") and expected in message, message
    assert int(peak_mb) < budget, f"peak {peak_mb} MB over the {budget} MB budget"


def test_an_empty_date_obs_is_a_warning(tmp_path):
    from skysurvey.fitsread import observation_time

    header = fits.Header({"DATE-OBS": ""})
    assert observation_time(header).night == "unknown"
    assert observation_time(header).warnings == ("empty DATE-OBS: night unknown",)
    header["MJD-OBS"] = 61130.25
    when = observation_time(header)
    assert when.night == "2026-03-31" and when.warnings == ("empty DATE-OBS",)


# ---------------------------------------------------------------------------------------------
# 6, 7. A reference that cannot be used fails the run; one that misleads is refused or said

def _bad_csv(t: Path) -> str:
    (t / "bad.csv").write_text("ra,dec,rmag\n150.1,2.2\n150.2,2.3,17,extra\n")
    return str(t / "bad.csv")


def _bad_bytes(t: Path, name: str, data: bytes) -> str:
    (t / name).write_bytes(data)
    return str(t / name)


def _not_hats(t: Path) -> str:
    (t / "hats").mkdir()
    (t / "hats" / "partition_info.csv").write_text("Norder,Npix\n5,123\n")
    return str(t / "hats")


def _no_r_column(t: Path, ref_frame) -> str:
    ref_frame.drop(columns=["rmag"]).to_parquet(t / "no_r.parquet", index=False)
    return str(t / "no_r.parquet")


def _good(t: Path, ref_frame) -> str:
    ref_frame.to_parquet(t / "ref.parquet", index=False)
    return str(t / "ref.parquet")


REFERENCE_ATTACKS = [
    # (attack, --reference made from (tmp_path, ref_frame), --reference-bands, exit status,
    #  expected in the one error line)
    ("missing file", lambda t, f: str(t / "nope.parquet"), None, 2, "no such file or object"),
    ("malformed CSV", lambda t, f: _bad_csv(t), None, 2, "cannot read"),
    ("FITS that is not FITS", lambda t, f: _bad_bytes(t, "bad.fits", b"SIMPLE = nonsense" * 9),
     None, 2, "cannot read"),
    ("broken VOTable", lambda t, f: _bad_bytes(t, "bad.vot", b"<?xml version='1.0'?><VOTABLE"),
     None, 2, "cannot read"),
    ("Parquet that is empty", lambda t, f: _bad_bytes(t, "empty.parquet", b""), None, 2,
     "cannot read"),
    ("a HATS folder without its files", lambda t, f: _not_hats(t), None, 2,
     "partition Norder=5 Npix=123 has no file"),
    ("a mapped column that does not exist", _good, "r=kmag", 2,
     "no column 'kmag' (mapped to band r)"),
    ("no column for the image's band", _no_r_column, None, 1,
     "no magnitude column for band 'r'"),
]


@pytest.fixture(scope="module")
def calib_field():
    from test_calibration import _sky

    from skysurvey.detect import measure_image
    from skysurvey.fitsread import FitsImage
    from skysurvey.synth import make_image, reference_catalog

    sky = _sky()
    image = make_image((512, 512), seed=5, sources=sky, transparency=0.23, rotation_deg=10.0)
    sources, row = measure_image(FitsImage(image.data, None, image.header, 0, "x"), "x")
    return sources, row, image, reference_catalog(sky, seed=1)


@pytest.mark.parametrize("attack, make, bands, status, expected", REFERENCE_ATTACKS,
                         ids=[a[0] for a in REFERENCE_ATTACKS])
def test_a_reference_that_cannot_be_used_fails_the_run(calib_field, tmp_path, capsys, attack,
                                                       make, bands, status, expected):
    from skysurvey.reference import clear_cache

    clear_cache()
    image, ref_frame = calib_field[2], calib_field[3]
    (tmp_path / "in").mkdir()
    image.write(tmp_path / "in" / "field.fits")
    uri = make(tmp_path, ref_frame)
    argv = ["--input", str(tmp_path / "in"), "--catalog", str(tmp_path / "cat"), "--workers",
            "1", "--no-progress", "--reference", uri] + (["--reference-bands", bands]
                                                         if bands else [])
    assert load_script("invoke_lambda").main(argv) == status
    captured = capsys.readouterr()
    if status == 2:  # before any image: one line, nothing written
        _one_error_line(captured.err.replace("INFO ", "\nINFO ").split("\nINFO")[0],
                        f"error: reference {uri}: ", expected)
        assert not (tmp_path / "cat").exists()
    else:  # the image fails by name; the rest of a batch would go on
        failed = captured.out.split("Failed images:")[1].strip().splitlines()[0]
        assert "field.fits" in failed and uri in failed and expected in failed
        assert not list((tmp_path / "cat").rglob("*.parquet"))


def test_a_missing_reference_bucket_fails_the_run(moto_server, calib_field, tmp_path, capsys):
    from skysurvey.reference import clear_cache

    clear_cache()
    (tmp_path / "in").mkdir()
    calib_field[2].write(tmp_path / "in" / "field.fits")
    uri = "s3://no-such-bucket/ref.parquet"
    assert load_script("invoke_lambda").main([
        "--input", str(tmp_path / "in"), "--catalog", str(tmp_path / "cat"), "--workers", "1",
        "--no-progress", "--reference", uri]) == 2
    assert f"error: reference {uri}: " in capsys.readouterr().err
    assert not (tmp_path / "cat").exists()


CALIBRATION_ATTACKS = [
    # (attack, reference frame from the true one, expected zero point source,
    #  expected zero point (None: the header's 30.0), expected in images.warnings or None)
    ("every row five times", lambda f: f.loc[f.index.repeat(5)], "reference", 30.0 - 0.23, None),
    ("every magnitude 8", lambda f: f.assign(rmag=8.0, rmag_err=0.01), "MAGZERO", None,
     "magnitudes in column rmag over the image are 8: not photometry"),
    ("magnitudes 3 mag off the header's", lambda f: f.assign(rmag=f["rmag"] + 3), "reference",
     30.0 - 0.23 + 3, "mag from the header's 30.00 (MAGZERO): check the reference's band"),
]


@pytest.mark.parametrize("attack, change, source, zero_point, warning", CALIBRATION_ATTACKS,
                         ids=[a[0] for a in CALIBRATION_ATTACKS])
def test_misleading_references_are_refused_or_said(calib_field, tmp_path, attack, change,
                                                   source, zero_point, warning):
    from skysurvey.calibrate import calibrate
    from skysurvey.reference import ReferenceSpec, clear_cache

    clear_cache()
    sources, row, _, ref_frame = calib_field
    change(ref_frame).to_parquet(tmp_path / "ref.parquet", index=False)
    _, new = calibrate(sources, row, "r", ReferenceSpec.parse(str(tmp_path / "ref.parquet")))
    assert new["zero_point_source"] == source
    assert new["zero_point"] == pytest.approx(zero_point or 30.0, abs=0.03)
    if warning is None:
        assert not new.get("warnings") or "reference" not in new["warnings"]
    else:
        assert warning in new["warnings"]
