"""A new offline-RL agent is one file: its config and class, registered together. This test is that file: a toy
agent (a linear policy on the encoder's features, trained by BC with its own extra config field) goes through the
whole offline-RL run (data generation, arm, training, held-out evaluation, report) by name, with nothing else in
vispre edited."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vispre.rl import run_offline_rl
from vispre.rl.agent import Agent, AgentConfig
from vispre.rl.registry import AGENTS, register_agent
from vispre.rl.rl_recipe import load_offline_rl_config
from vispre.utils.typed_config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ToyConfig(AgentConfig):
    name: str = "toy"
    label_smoothing: float = 0.1  # a field only this agent has


@register_agent("toy", ToyConfig)
class Toy(Agent):
    def __init__(self, encoder, space, cfg: ToyConfig, frame_stack: int = 1):
        super().__init__(encoder, space, cfg, frame_stack)
        self.head = nn.Linear(encoder.num_features, space.n)
        self.updates = 0

    def losses(self, batch):
        self.updates += 1
        logits = self.head(self.encoder(batch["observations"]))
        loss = nn.functional.cross_entropy(logits, batch["actions"], label_smoothing=self.cfg.label_smoothing)
        return loss, {"actor_loss": loss.detach()}

    @torch.no_grad()
    def act(self, obs, goals=None, sample=True):
        return self.head(self.encoder(obs)).argmax(-1)


def minigrid_recipe_without_agent(tmp_path) -> Path:
    """The shipped MiniGrid recipe with its (IQL) agent section removed."""
    recipe = OmegaConf.load(ROOT / "eval/offline_rl_minigrid.yaml")
    recipe.pop("agent")
    OmegaConf.save(recipe, tmp_path / "recipe.yaml")
    return tmp_path / "recipe.yaml"


def test_a_toy_agent_registered_in_one_file_runs_by_name(tmp_path):
    assert AGENTS["toy"] is Toy
    cfg = load_offline_rl_config(minigrid_recipe_without_agent(tmp_path), [
        "agent={name: toy, steps: 6, batch_size: 8, label_smoothing: 0.2, augment_pad: 0}",
        "data.generate.episodes=12", "data.generate.val_episodes=2", "env.holdout_layouts=1",
        "arms=[{kind: scratch}]", "seeds=[0]", "eval.episodes=2", "eval.curve_points=0", "eval.max_steps=8",
        "eval.random_reference=false", f"output_dir={tmp_path / 'out'}", "threads=1"])
    assert isinstance(cfg.agent, ToyConfig) and cfg.agent.label_smoothing == 0.2  # typed by the toy's config
    results = run_offline_rl(cfg)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["protocol"]["agent"]["name"] == "toy" and saved["protocol"]["agent"]["label_smoothing"] == 0.2
    record = [r for r in saved["runs"] if r["arm"] == "scratch"][0]
    assert record["final"]["episodes"] == 2 and results["arms"].keys() == {"scratch"}
    losses = [json.loads(line) for line in (tmp_path / "out/runs/scratch/seed0/metrics.jsonl").read_text().splitlines()]
    assert sum("actor_loss" in row for row in losses) >= 1


def test_an_agent_field_is_checked_against_that_agent(tmp_path):
    # label_smoothing belongs to the toy agent only: under IQL it is an unknown key, named as the agent's field
    with pytest.raises(ConfigError, match="agent.label_smoothing"):
        load_offline_rl_config(ROOT / "eval/offline_rl_minigrid.yaml", ["agent={name: iql, label_smoothing: 0.1}"])
    with pytest.raises(ConfigError, match="agent.name: 'nope' is not one of"):
        load_offline_rl_config(ROOT / "eval/offline_rl_minigrid.yaml", ["agent.name=nope"])
