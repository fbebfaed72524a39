"""Offline RL from pixels: does a pretrained encoder beat one trained from scratch?

OGBench-layout datasets (``datasets``, ``npz``), agents (``bc``, ``iql``, ``hiql_shared``; OGBench's ``gcbc``,
``gcivl``, ``gciql``, ``hiql`` as OGBench builds them, ``ogbench_layout``) on one encoder
interface (``encoders``), encoder arms (``arms``), rollouts and value error (``evaluate``, ``envs``),
and the comparison with its report (``run``, ``report``), configured by ``config.OfflineRLConfig``.
"""

from __future__ import annotations

from .rl_recipe import OfflineRLConfig, load_offline_rl_config
from .run import run_offline_rl

__all__ = ["OfflineRLConfig", "load_offline_rl_config", "run_offline_rl"]
