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

.PHONY: install demo icvf rl-compare ogbench-cube test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import vispre, torch, torchvision, timm, open_clip, webdataset, accelerate"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/make_demo_data.py $(DEMO)/data
	$(VENV)/bin/vispre shards inspect $(DEMO)/data/scenes --decode
	$(VENV)/bin/vispre pretrain recipes/demo/simclr.yaml \
		data.spec=$(DEMO)/data/scenes::$(DEMO)/data/digits-train train.output_dir=$(DEMO)/simclr
	$(VENV)/bin/vispre export $(DEMO)/simclr $(DEMO)/export
	for flags in --append-to-card --random-init; do \
		$(VENV)/bin/vispre eval eval/demo_digits.yaml --encoder $(DEMO)/export $$flags \
			train.path=$(DEMO)/data/digits-train test.path=$(DEMO)/data/digits-test && \
		$(VENV)/bin/vispre eval eval/demo_scenes.yaml --encoder $(DEMO)/export $$flags \
			train.path=$(DEMO)/data/scenes test.path=$(DEMO)/data/scenes-val && \
		$(VENV)/bin/vispre eval eval/demo_shapes.yaml --encoder $(DEMO)/export $$flags \
			train.path=$(DEMO)/data/shapes-train test.path=$(DEMO)/data/shapes-test || exit 1; \
	done
	$(PY) tools/demo_report.py $(DEMO)/export demo_digits demo_scenes demo_shapes --data $(DEMO)/data
	@echo "demo data: $(DEMO)/data (scenes/, scenes-val/, shapes-train/, shapes-test/, digits-train/, digits-test/)"
	@echo "SimCLR run: $(DEMO)/simclr (checkpoints/, metrics.jsonl, tensorboard events)"
	@echo "exported encoder (timm local-dir): $(DEMO)/export; scores and plots: $(DEMO)/export/eval/"

# ICVF on the embedded MiniGrid video in both settings (held_out: evaluation and validation layouts kept out of
# the video; in_domain: not), our CPU recipe, reports and exports (~1 min per video, ~8 min per run when idle).
ICVF_RECIPE ?= recipes/minigrid/icvf_cpu.yaml
ICVF_RUN ?= runs/minigrid/icvf_cpu
icvf: $(STAMP)
	for s in held_out in_domain; do \
		$(PY) tools/icvf_minigrid_report.py --setting $$s --recipe $(ICVF_RECIPE) && \
		$(VENV)/bin/vispre export $(ICVF_RUN)-$$s $(ICVF_RUN)-$$s-export || exit 1; done

# Offline RL from pixels: scratch vs frozen ICVF (both settings) vs random weights, 3 seeds (~25 min when idle).
rl-compare: $(STAMP)
	test -f $(ICVF_RUN)-held_out-export/config.json -a -f $(ICVF_RUN)-in_domain-export/config.json || $(MAKE) icvf
	$(VENV)/bin/vispre eval eval/offline_rl_minigrid_compare.yaml

# OGBench visual-cube-single at CPU scale (needs `pip install 'vispre[ogbench]'`): the dataset made with OGBench's
# environment and oracle (lean rendering, ~21 min), ICVF / SimCLR / AB_SimCLR pretrained on its frames and exported,
# then scratch vs the frozen exports vs random weights, 3 seeds each (about 2.5 h on two cores).
CUBE ?= data/ogbench/visual-cube-single-play-v0.npz
OGB ?= runs/ogbench
ogbench-cube: $(STAMP)
	test -f $(CUBE) || MUJOCO_GL=egl $(PY) tools/make_ogbench_dataset.py visual-cube-single-play-v0 --out $(dir $(CUBE)) \
		--episodes 50 --render-quality lean --chunk-episodes 2 --workers 2
	test -f $(OGB)/cube_frames/sizes.json || $(PY) tools/minigrid_frames_to_shards.py $(CUBE) $(OGB)/cube_frames --every 5
	for r in icvf_cube_cpu simclr_cube ab_simclr_cube; do test -f $(OGB)/$$r-export/config.json || { \
		$(VENV)/bin/vispre pretrain recipes/ogbench/$$r.yaml && \
		$(VENV)/bin/vispre export $(OGB)/$$r $(OGB)/$$r-export; } || exit 1; done
	MUJOCO_GL=egl $(VENV)/bin/vispre eval eval/offline_rl_ogbench_cube_cpu.yaml data.path=$(CUBE)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/loader.py

clean:
	rm -rf $(DEMO) .pytest_cache
