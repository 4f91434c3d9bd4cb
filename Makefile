# Two commands set a fresh machine up: `make demo` (the whole local pipeline) and `make test`.
# Both create .venv and install requirements.txt first when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: help install demo test lint clean-data benchmark

help:
	@echo "make demo       run the whole local pipeline (generate, upload, detect, query, plot)"
	@echo "make test       lint and run the test suite (notebook included)"
	@echo "make benchmark  performance benchmarks (writes data/output/benchmark_results.md;"
	@echo "                benchmarks/run.py --update-results rewrites benchmarks/RESULTS.md)"
	@echo "make clean-data remove generated data under data/"

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/download_sample_fits.py --output data/sample
	$(BIN)/python scripts/upload_to_s3.py --input data/sample
	$(BIN)/python scripts/invoke_lambda.py --reference data/sample/reference.parquet
	$(BIN)/python scripts/build_objects.py
	REFERENCE_CATALOG=data/sample/reference.parquet $(BIN)/python scripts/query_with_athena.py --query all
	$(BIN)/python scripts/query_with_athena.py --query light_curve
	$(BIN)/python scripts/plot_catalog.py --truth data/sample/truth --reference data/sample/reference.parquet
	@echo ""
	@echo "Catalog: data/catalog/   Plots: data/output/plots/   Query exports: data/output/queries/"
	@echo "Report:  $(CURDIR)/data/output/report.html   (open it in a browser; works offline)"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean-data:
	rm -rf data/sample data/raw data/catalog data/output
