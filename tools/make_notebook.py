"""Write notebooks/sky_analysis.ipynb (outputs stripped). Edit the cells here, then run it."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell("""# Sky survey analysis

**Goal:** walk through the whole pipeline with the same functions the scripts use: the raw
images, the source catalog the handler wrote, the named SQL queries, plots, the quality of the
catalog against the generator's truth, and an export.

**Summary:** runs top to bottom on a fresh clone (it makes and catalogs a small sample when
none exists). Settings come from the environment or `.skysurvey.env`, like the scripts: with
`s3://` buckets the same cells read S3 instead of local folders."""),
    new_markdown_cell("## 1. Configuration"),
    new_code_cell("""import os
from pathlib import Path

import pandas as pd

from skysurvey import plots, queries, runner
from skysurvey.config import OUTPUT_DIR, SAMPLE_DIR, get_setting, is_s3_uri
from skysurvey.fitsread import read_fits
from skysurvey.storage import open_store

BUCKET_RAW = get_setting("BUCKET_RAW")
BUCKET_CATALOG = get_setting("BUCKET_CATALOG")
SAMPLE = Path(os.environ.get("SKYSURVEY_SAMPLE_DIR", SAMPLE_DIR))
SAMPLE_SIZE = int(os.environ.get("SKYSURVEY_SAMPLE_SIZE", "1024"))
OUTPUT = Path(os.environ.get("SKYSURVEY_OUTPUT_DIR", OUTPUT_DIR))
ON_AWS = is_s3_uri(BUCKET_RAW)
print(f"raw: {BUCKET_RAW}\\ncatalog: {BUCKET_CATALOG}\\nmode: {'AWS' if ON_AWS else 'local'}")"""),
    new_markdown_cell("## 2. Uploaded images\n\nMakes and uploads a small sample when the raw "
                      "bucket has no images yet (`download_sample_fits.py` + `upload_to_s3.py`)."),
    new_code_cell("""from skysurvey.synth import write_sample
from skysurvey.upload import find_fits, upload_files

raw_images = BUCKET_RAW.rstrip("/") + "/images"
if not ON_AWS:
    Path(raw_images).mkdir(parents=True, exist_ok=True)
keys = runner.list_images(raw_images)
if not keys:
    if not SAMPLE.is_dir() or not find_fits(SAMPLE):
        write_sample(SAMPLE, count=3, size=SAMPLE_SIZE)
    upload_files(find_fits(SAMPLE), BUCKET_RAW)
    keys = runner.list_images(raw_images)
print(len(keys), "images:", keys)"""),
    new_code_cell("""store = open_store(raw_images)
first = keys[0]
source = store.local_path(first) if not ON_AWS else store.read_bytes(first)
image = read_fits(source, name=store.url(first))
print(image.data.shape, image.header.get("FILTER"), image.header.get("DATE-OBS"))"""),
    new_markdown_cell("## 3. Detection results\n\nRuns the handler's core over every image "
                      "that has no catalog yet (`invoke_lambda.py --only-new`)."),
    new_code_cell("""from skysurvey.schema import image_id_from_name

done = runner.catalogued_image_ids(BUCKET_CATALOG)
todo = [k for k in keys if image_id_from_name(k) not in done]
replies = runner.run_local(raw_images, todo, BUCKET_CATALOG) if todo else []
print(runner.summary_table(replies, 1.0) if replies else "catalog up to date")
sources = plots.read_catalog(BUCKET_CATALOG)
sources.head()"""),
    new_markdown_cell("## 4. Queries\n\nThe named queries of `query_with_athena.py`, on DuckDB."),
    new_code_cell("""results = {name: queries.run_named(name, BUCKET_CATALOG)
           for name in queries.NAMED_QUERIES}
for name, df in results.items():
    print(f"== {name} ==")
    print(df.to_string(index=False))"""),
    new_markdown_cell("## 5. Visualizations"),
    new_code_cell("""image_id = image_id_from_name(first)
on_image = sources[sources["image_id"] == image_id]
fig = plots.plot_image_with_sources(image.data, on_image, image_id)"""),
    new_code_cell("""fig = plots.plot_magnitude_histogram(sources)
fig = plots.plot_sky_map(sources)
fig = plots.plot_snr_histogram(sources)"""),
    new_markdown_cell("## 6. Statistics against the truth\n\nFor the synthetic sample: "
                      "completeness of sources with expected SNR >= 20 and the flux ratio."),
    new_code_cell("""rows = []
for image_id, found in sources.groupby("image_id"):
    truth_file = SAMPLE / "truth" / f"{image_id}.csv"
    if not truth_file.is_file():
        continue
    truth = pd.read_csv(truth_file)
    bright = truth[truth["snr"] >= 20]
    matched = plots.match_to_truth(found, bright)
    rows.append({"image_id": image_id, "bright_true": len(bright),
                 "completeness": len(matched) / max(len(bright), 1),
                 "median_flux_ratio": (matched["flux"] / matched["true_flux"]).median()})
stats = pd.DataFrame(rows)
stats"""),
    new_markdown_cell("## 7. Export"),
    new_code_cell("""OUTPUT.mkdir(parents=True, exist_ok=True)
sources.to_parquet(OUTPUT / "sources.parquet", index=False)
results["source_statistics"].to_csv(OUTPUT / "source_statistics.csv", index=False)
print("wrote", OUTPUT / "sources.parquet", "and", OUTPUT / "source_statistics.csv")"""),
]

nb = new_notebook(cells=CELLS, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"}})
path = Path(__file__).resolve().parents[1] / "notebooks" / "sky_analysis.ipynb"
nbformat.write(nb, path)
print(path)
