# Two commands set a fresh machine up: `make demo` (the whole local pipeline) and `make test`.
# Both create .venv and install requirements.txt first when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# pytest-xdist workers for `make test` (auto: one per core)
TEST_WORKERS ?= auto

.PHONY: help install demo test lint clean-data benchmark lock upgrade-check

help:
	@echo "make demo       run the whole local pipeline (generate, upload, detect, query, plot)"
	@echo "make test       lint and run the test suite (notebook included)"
	@echo "make benchmark  performance benchmarks (writes data/output/benchmark_results.md;"
	@echo "                benchmarks/run.py --update-results rewrites benchmarks/RESULTS.md)"
	@echo "make clean-data remove generated data under data/"
	@echo "make lock       re-resolve requirements.lock (after changing requirements.txt)"
	@echo "make upgrade-check  newest allowed versions in a throwaway venv: what moves, what fails"

# The lock pins every package of .venv (pip included); requirements.txt only gives ranges.
$(STAMP): requirements.txt pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements.lock
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/download_sample_fits.py --output-dir data/sample
	$(BIN)/python scripts/upload_to_s3.py --input data/sample
	$(BIN)/python scripts/invoke_lambda.py --reference data/sample/reference.parquet
	$(BIN)/python scripts/build_objects.py
	$(BIN)/python scripts/forced_photometry.py
	REFERENCE_CATALOG=data/sample/reference.parquet $(BIN)/python scripts/query_with_athena.py --query all
	$(BIN)/python scripts/query_with_athena.py --query light_curve
	$(BIN)/python scripts/plot_catalog.py --truth data/sample/truth --reference data/sample/reference.parquet
	@echo ""
	@echo "Catalog: data/catalog/   Plots: data/output/plots/   Query exports: data/output/queries/"
	@echo "Report:  $(CURDIR)/data/output/report.html   (open it in a browser; works offline)"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check .

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py

# Re-resolve the lock for Python 3.11-3.13 on Linux and macOS, keeping today's pins where the ranges
# still allow them; the Lambda zip's pins (requirements-lambda.lock) constrain the shared packages.
lock: $(STAMP)
	$(BIN)/uv pip compile requirements.txt -c requirements-lambda.lock --universal \
	    --python-version 3.11 --no-emit-package skysurvey --quiet -o requirements.lock

upgrade-check: $(STAMP)
	$(BIN)/python tools/upgrade_check.py $(UPGRADE_CHECK_FLAGS)

clean-data:
	rm -rf data/sample data/survey data/raw data/catalog data/output
