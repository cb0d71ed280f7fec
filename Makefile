# Convenience targets; each is one documented command (see README.md).
PYTHON ?= python
DATA ?= ../shared/data/cifar10
DEMO ?= runs/demo

.PHONY: install test lint demo bench

install:
	$(PYTHON) -m pip install -r requirements.txt -e .

test:
	BUDGETNET_DATA=$(DATA) $(PYTHON) -m pytest

lint:
	ruff check code tests benchmarks inference.py
	ruff format --check code tests benchmarks inference.py

# On a fresh machine: install, train the cpu-quick preset on the CPU, turn the test split into
# a Kaggle-style pickle, label it with inference.py, check and score the submission.
demo: install
	$(PYTHON) code/train.py --preset cpu-quick --data $(DATA) --run-dir $(DEMO)/run
	$(PYTHON) code/make_kaggle_pickle.py --data $(DATA) --split test \
		--out $(DEMO)/test_nolabel.pkl --key $(DEMO)/test_key.csv
	$(PYTHON) inference.py --pkl $(DEMO)/test_nolabel.pkl --checkpoint $(DEMO)/run \
		--out $(DEMO)/submission.csv
	$(PYTHON) code/check_submission.py $(DEMO)/submission.csv --pkl $(DEMO)/test_nolabel.pkl
	$(PYTHON) code/score_submission.py $(DEMO)/submission.csv --key $(DEMO)/test_key.csv

bench:
	$(PYTHON) benchmarks/data_load.py --data $(DATA)
	$(PYTHON) benchmarks/search_speed.py
	$(PYTHON) benchmarks/cpu_quick.py --data $(DATA)
