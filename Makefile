# Two commands do all the set-up on a fresh clone:
#   make repro   create .venv when missing, install, run the whole DVC pipeline (dvc repro)
#   make test    create .venv when missing, install, run the test suite without the end-to-end runs
#                (about 4 minutes on 2 cores); `make test-slow` runs those (about 13 minutes); CI runs both
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sim2real-installed
export NO_ALBUMENTATIONS_UPDATE := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test test-slow test-all ui bench seeds ablate ablate-family scenarios pick-rules

# The install silences setuptools' "Editable installation" notice (about folders named like the
# package) by its message only; every other build warning still shows.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -ra --durations=10

# The end-to-end runs marked slow: tiny `dvc repro` runs, kill -9, the README's examples, two torchrun
# nodes, a real mlflow server.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -ra --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -ra --durations=15

UI_PORT ?= 5000
ui: $(STAMP)
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --workers 1 --host 127.0.0.1 --port $(UI_PORT)

bench: $(STAMP)
	$(BIN)/python bench/bench_gan.py

SEEDS ?= 0 1 2
seeds: $(STAMP)
	$(BIN)/python scripts/seeds.py --seeds $(SEEDS)

ablate: $(STAMP)
	$(BIN)/python scripts/ablate_gan.py

# The translation family (issue 23) against the default CycleGAN on three scenarios, a dev read on their
# real training labels (docs/results.md; about 80 minutes on 2 cores; not CI).
FAMILY_SCENARIOS = builtin grey photo
ablate-family: $(STAMP)
	$(BIN)/python scripts/scenarios.py --only $(FAMILY_SCENARIOS) --stage train_task@source_only
	$(BIN)/python scripts/ablate_gan.py --family --dev-read --workspace $(addprefix runs/scenarios/,$(FAMILY_SCENARIOS))

# The scenario suite (scripts/make_scenario.py): the default pipeline on seven scenarios, one workspace
# each under runs/scenarios/, then runs/scenarios/scorecard.md (about two hours on 2 cores; not CI).
scenarios: $(STAMP)
	$(BIN)/python scripts/scenarios.py
	$(BIN)/python scripts/pick_rules.py
