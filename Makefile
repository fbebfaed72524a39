# Two commands on a fresh machine: `make demo` (the main job on the embedded data) and `make test`.
# Both create or reuse .venv and install vispre with the pinned torch (constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vispre-installed
DEMO ?= runs/demo
export OMP_WAIT_POLICY := PASSIVE
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install demo icvf rl-compare test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import vispre, torch, torchvision, timm, open_clip, webdataset, accelerate"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/make_demo_data.py $(DEMO)/data
	$(VENV)/bin/vispre shards inspect $(DEMO)/data/scenes --decode
	$(VENV)/bin/vispre shards stream $(DEMO)/data/scenes --samples-per-epoch 4000 --crop 48 --crops 2 --batch-size 64
	$(VENV)/bin/vispre pretrain recipes/demo/ab_dino.yaml data.spec=$(DEMO)/data/scenes train.output_dir=$(DEMO)/ab_dino
	$(VENV)/bin/vispre export $(DEMO)/ab_dino $(DEMO)/export
	$(VENV)/bin/vispre eval eval/demo_digits.yaml --encoder $(DEMO)/export --append-to-card \
		train.path=$(DEMO)/data/digits-train test.path=$(DEMO)/data/digits-test
	$(VENV)/bin/vispre eval eval/demo_scenes.yaml --encoder $(DEMO)/export --append-to-card \
		train.path=$(DEMO)/data/scenes test.path=$(DEMO)/data/scenes-val
	@echo "demo data: $(DEMO)/data (scenes/, scenes-val/, digits-train/, digits-test/)"
	@echo "AB_DINO run: $(DEMO)/ab_dino (checkpoints/, metrics.jsonl, tensorboard events)"
	@echo "exported encoder (timm local-dir): $(DEMO)/export; scores and plots: $(DEMO)/export/eval/"

# ICVF on the embedded MiniGrid video (~1 min to make it, ~8 min to train), its report, and the export.
icvf: $(STAMP)
	$(PY) tools/icvf_minigrid_report.py
	$(VENV)/bin/vispre export runs/minigrid/icvf runs/minigrid/icvf-export

# Offline RL from pixels: scratch vs the ICVF export vs the demo's AB_DINO export, 3 seeds (~20 min).
rl-compare: $(STAMP)
	test -f runs/minigrid/icvf-export/config.json || $(MAKE) icvf
	test -f $(DEMO)/export/config.json || $(MAKE) demo
	$(VENV)/bin/vispre eval eval/offline_rl_minigrid_compare.yaml arms.2.encoder=$(DEMO)/export

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/loader.py

clean:
	rm -rf $(DEMO) .pytest_cache
