"""V-PTR stages 2-3: CQL's loss terms by hand, V-PTR's sparse rewards and Monte-Carlo returns, batch mixing,
and an exact resume across the stage-2 -> stage-3 switch."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from vispre.models.encoder import EncoderOutput
from vispre.rl.checkpoint import latest_checkpoint, list_checkpoints
from vispre.rl.cql import (
    CQL,
    CQLConfig,
    bellman_loss,
    cql_regulariser,
    discrete_actor_loss,
    max_q_target,
    temperature_loss,
)
from vispre.rl.encoders import FeatureEncoder, PixelEncoder
from vispre.rl.networks import ActionSpace
from vispre.rl.task_data import (
    DatasetMix,
    RewardConvention,
    TaskSource,
    monte_carlo_returns,
    sparse_task_rewards,
    stage_weights,
)
from vispre.rl.transitions import Transitions
from vispre.rl.vptr import mix_weights, train_stages

torch.set_num_threads(1)


# -- the loss terms, by hand --------------------------------------------------------------------------------
def test_max_q_backup_and_bellman_by_hand():
    # next_q [2 critics, B=2, J=3]: min over critics then max over actions
    next_q = torch.tensor([[[1.0, 4.0, 2.0], [0.0, -1.0, 3.0]],
                           [[2.0, 3.0, 5.0], [1.0, -2.0, 0.5]]])
    # min: [[1, 3, 2], [0, -2, 0.5]] -> max: [3, 0.5]
    y = max_q_target(torch.tensor([-1.0, 10.0]), torch.tensor([1.0, 0.0]), next_q, 0.96)
    torch.testing.assert_close(y, torch.tensor([-1 + 0.96 * 3, 10.0]))
    q = torch.tensor([[1.0, 9.0], [2.0, 10.0]])
    # ((1-1.88)^2 + (9-10)^2 + (2-1.88)^2 + (10-10)^2) / 4
    expected = ((1 - 1.88) ** 2 + 1 + (2 - 1.88) ** 2 + 0) / 4
    assert bellman_loss(q, y).item() == pytest.approx(expected, rel=1e-5)


def test_cql_regulariser_discrete_with_the_monte_carlo_bound():
    q_all = torch.tensor([[[1.0, 2.0, 0.0]], [[0.5, -1.0, 3.0]]])  # [2, B=1, n=3]
    q_data = torch.tensor([[2.0], [-1.0]])  # a_data = 1
    lse = [math.log(math.e ** 1 + math.e ** 2 + 1), math.log(math.e ** 0.5 + math.e ** -1 + math.e ** 3)]
    expected = ((lse[0] - 2) + (lse[1] + 1)) / 2
    assert cql_regulariser(q_data, q_all, None).item() == pytest.approx(expected, rel=1e-5)
    # G(s) = 1.5 lifts every Q below it to 1.5 inside the logsumexp (Q(s, a_data) itself is not bounded)
    mc = torch.tensor([1.5])
    lse = [math.log(2 * math.e ** 1.5 + math.e ** 2), math.log(2 * math.e ** 1.5 + math.e ** 3)]
    expected = ((lse[0] - 2) + (lse[1] + 1)) / 2
    assert cql_regulariser(q_data, q_all, None, mc=mc).item() == pytest.approx(expected, rel=1e-5)


def test_cql_regulariser_continuous_importance_sampled():
    # one critic pair, B=1, J=2 policy and J=2 uniform actions in a 1-D box: u = 1/2, log u = log 0.5
    q_pi = torch.tensor([[[1.0, 0.0]], [[2.0, 1.0]]])
    log_pi = torch.tensor([[-0.5, 0.2]])
    q_rand = torch.tensor([[[0.3, -0.3]], [[0.0, 0.1]]])
    q_data = torch.tensor([[0.7], [1.1]])
    mc = torch.tensor([0.5])
    lu = math.log(0.5)

    def lse(xs):
        return math.log(sum(math.exp(x) for x in xs))

    c1 = lse([1.0 + 0.5, 0.5 - 0.2, 0.3 - lu, -0.3 - lu]) - 0.7  # max(0, 0.5) = 0.5 for the second
    c2 = lse([2.0 + 0.5, 1.0 - 0.2, 0.0 - lu, 0.1 - lu]) - 1.1
    got = cql_regulariser(q_data, q_pi, log_pi, q_rand, lu, mc).item()
    assert got == pytest.approx((c1 + c2) / 2, rel=1e-5)


def test_actor_and_temperature_losses_by_hand():
    p = torch.tensor([[0.2, 0.8]])
    q = torch.tensor([[1.0, 3.0]])
    alpha = torch.tensor(0.5)
    expected = 0.2 * (0.5 * math.log(0.2) - 1) + 0.8 * (0.5 * math.log(0.8) - 3)
    assert discrete_actor_loss(p.log(), q, alpha).item() == pytest.approx(expected, rel=1e-5)
    log_alpha = torch.tensor(math.log(0.5))
    assert temperature_loss(log_alpha, torch.tensor([0.3]), 0.2).item() == pytest.approx(0.5 * 0.1, rel=1e-5)


def test_agent_losses_equal_the_terms_on_its_own_network_outputs():
    """The agent's critic loss on a 2-transition batch, recomputed from its networks' outputs by hand."""
    torch.manual_seed(0)
    cfg = CQLConfig(hidden=[8], num_tasks=2, colour_jitter=False, augment_pad=0)
    agent = CQL(FeatureEncoder(3), ActionSpace(True, 3), cfg).configure()
    batch = {"observations": torch.randn(2, 1, 3), "next_observations": torch.randn(2, 1, 3),
             "actions": torch.tensor([0, 2]), "rewards": torch.tensor([-1.0, 10.0]), "masks": torch.tensor([1.0, 0.0]),
             "mc_returns": torch.tensor([5.0, 10.0]), "task": torch.tensor([1, 0])}
    _, m = agent.losses(batch)
    with torch.no_grad():
        onehot = torch.eye(2)[batch["task"]]
        x = torch.cat([batch["observations"].flatten(1), onehot], 1).numpy().astype(np.float64)
        xn = torch.cat([batch["next_observations"].flatten(1), onehot], 1)
        t = agent.critic_target.module
        qn = np.minimum(t.q.q1(xn).numpy(), t.q.q2(xn).numpy())  # [2, 3]
        y = np.array([-1.0, 10.0]) + 0.96 * np.array([1.0, 0.0]) * qn.max(1)
        xt = torch.from_numpy(x).float()
        qs = [agent.critic.q.q1(xt).numpy(), agent.critic.q.q2(xt).numpy()]
        a = batch["actions"].numpy()
        td, cql = 0.0, 0.0
        for q in qs:
            qd = q[np.arange(2), a]
            td += np.mean((qd - y) ** 2) / 2
            bounded = np.maximum(q, batch["mc_returns"].numpy()[:, None])
            cql += np.mean(np.log(np.exp(bounded).sum(1)) - qd) / 2
    assert m["td_loss"].item() == pytest.approx(td, rel=1e-4)
    assert m["cql_loss"].item() == pytest.approx(cql, rel=1e-4)
    assert m["critic_loss"].item() == pytest.approx(td + 5.0 * cql, rel=1e-4)


def test_actor_and_critic_encoders_are_separate_copies():
    enc = PixelEncoder(TinyBackbone())
    agent = CQL(enc, ActionSpace(True, 3), CQLConfig(hidden=[8])).configure()
    assert agent.actor_encoder is not agent.encoder and agent.critic.encoder is agent.encoder
    for p, q in zip(agent.actor_encoder.parameters(), agent.encoder.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()


# -- V-PTR's sparse rewards, Monte-Carlo returns, mixing ---------------------------------------------------
def chain_data(lengths, frame=8, masks=None, seed=0) -> Transitions:
    rows = sum(lengths)
    rng = np.random.default_rng(seed)
    terminals = np.zeros(rows, np.float32)
    terminals[np.cumsum(lengths) - 1] = 1
    data = {"observations": rng.integers(0, 256, (rows, frame, frame, 3), dtype=np.uint8),
            "actions": rng.integers(0, 3, rows), "terminals": terminals,
            "valids": 1.0 - terminals}
    if masks is not None:
        data["rewards"] = 1.0 - masks
        data["masks"] = masks
    return Transitions.from_layout(data)


def test_sparse_rewards_last_three_steps_and_returns():
    data = chain_data([6, 4])  # transitions 0..4 and 6..8 (rows 5 and 9 are last frames)
    out, mc = sparse_task_rewards(data, RewardConvention(final_steps=3, all_successful=True), 0.5)
    pos = [2, 3, 4, 6, 7, 8]
    expected = np.where(np.isin(np.arange(10), pos), 10.0, -1.0)
    np.testing.assert_array_equal(out.rewards[out.valid], expected[out.valid])
    np.testing.assert_array_equal(out.masks[pos], 0.0)
    # G_t = r_t + 0.5 m_t G_{t+1}: positive steps stop the backup, so G = 10 there; G_1 = -1 + 0.5 * 10 = 4,
    # G_0 = -1 + 0.5 * 4 = 1
    np.testing.assert_allclose(mc[[0, 1, 2, 3, 4]], [1.0, 4.0, 10.0, 10.0, 10.0])
    np.testing.assert_allclose(mc[[6, 7, 8]], [10.0, 10.0, 10.0])
    # with the data's masks: the first trajectory completes at row 2, the second never does
    masks = np.ones(10, np.float32)
    masks[2] = 0
    out, mc = sparse_task_rewards(chain_data([6, 4], masks=masks), RewardConvention(final_steps=2), 1.0)
    assert out.rewards[[0, 1, 2, 3, 4, 6, 7, 8]].tolist() == [-1, 10, 10, -1, -1, -1, -1, -1]
    np.testing.assert_allclose(monte_carlo_returns(out, 1.0)[[0, 6]], [9.0, -3.0])


def test_mix_counts_and_stage_weights():
    assert stage_weights(0, [1, 1], 1, 100) == [0.5, 0.5, 0.0]
    assert stage_weights(100, [1, 1], 1, 100, 0.9) == pytest.approx([0.45, 0.45, 0.1])
    srcs = [TaskSource(str(i), chain_data([5, 5], seed=i), np.zeros(10, np.float32), i) for i in range(2)]
    mix = DatasetMix(srcs, [0.9, 0.1])
    assert mix.counts(64) == [57, 7]  # floor(64 * 0.9) = 57, the rest from the target
    three = DatasetMix(srcs * 2, [1, 1, 1, 0])  # stage 2 with three prior sources: no target row
    assert three.counts(64) == [21, 21, 22, 0]
    batch = mix.sample(64, np.random.default_rng(0))
    assert batch["task"].tolist() == [0] * 57 + [1] * 7 and batch["observations"].shape == (64, 1, 8, 8, 3)


# -- exact resume across the stages ------------------------------------------------------------------------
class TinyBackbone(nn.Module):
    num_features = 8

    def __init__(self, norm: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.norm = nn.BatchNorm2d(4) if norm else nn.Identity()  # BatchNorm: 0-dim num_batches_tracked buffers
        self.fc = nn.Linear(4 * 3 * 3, 8)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x)))
        return EncoderOutput(h.flatten(2).transpose(1, 2), self.fc(h.flatten(1)))


def make_run(seed: int, norm: bool = False):
    torch.manual_seed(seed)
    cfg = CQLConfig(hidden=[16], num_tasks=3, batch_size=10, augment_pad=1)
    encoder = PixelEncoder(TinyBackbone(norm), batch_norm="train")
    agent = CQL(encoder, ActionSpace(True, 3), cfg).configure(seed=0)
    conv = RewardConvention(all_successful=True)
    srcs = []
    for task in range(3):
        data, mc = sparse_task_rewards(chain_data([6, 5, 7], seed=task), conv, 0.96)
        srcs.append(TaskSource(f"t{task}", data, mc, task))
    return agent, DatasetMix(srcs, [1, 1, 1])


def weights(step):
    return mix_weights(step, [1.0, 1.0], 1, 4, 0.9, True)


@pytest.mark.parametrize("norm", [False, True])
def test_resume_across_stages_is_exact(tmp_path, norm):
    """8 steps with the switch to 90/10 after step 4, uninterrupted vs stopped at the stage-2 checkpoint and
    resumed by a freshly built agent (other initial weights): the same parameters, optimizer moments and
    next batch; with a BatchNorm encoder too (its running statistics and counters shared by two networks)."""
    a, mix_a = make_run(0, norm)
    torch.manual_seed(123)
    ra = train_stages(a, mix_a, np.random.default_rng(7), tmp_path / "a", 8, weights, 10, stage2_steps=4,
                      log_every=1)

    # killed at step 6: two stage-3 steps after the stage-2 checkpoint are lost (and their logged rows dropped)
    b, mix_b = make_run(0, norm)
    torch.manual_seed(123)
    rb = train_stages(b, mix_b, np.random.default_rng(7), tmp_path / "b", 8, weights, 10, stage2_steps=4, stop_at=6,
                      log_every=1)
    assert rb["step"] == 6 and latest_checkpoint(tmp_path / "b").name == "checkpoint-00000004"
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "critic_lo')  # a line cut mid-write
    del b
    c, mix_c = make_run(99, norm)  # a new process: other initial weights, other random state
    torch.manual_seed(555)
    before = [p.clone() for p in c.parameters()]
    rc = train_stages(c, mix_c, np.random.default_rng(1), tmp_path / "b", 8, weights, 10, stage2_steps=4,
                      log_every=1)
    assert rc["step"] == 8
    # the log holds each step once, with the uninterrupted run's numbers
    assert (tmp_path / "b" / "metrics.jsonl").read_text() == (tmp_path / "a" / "metrics.jsonl").read_text()
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[3]["weights"] == pytest.approx([0.5, 0.5, 0.0])  # step 4: stage 2, no target data
    assert rows[4]["weights"] == pytest.approx([0.45, 0.45, 0.1])  # step 5: stage 3
    assert mix_c.weights == pytest.approx([0.45, 0.45, 0.1])  # stage 3: 90% prior / 10% target
    assert any(not torch.equal(p, q) for p, q in zip(before, c.parameters()))
    sa, sc = a.state_dict(), c.state_dict()
    assert sa.keys() == sc.keys()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    for (_, x), (_, y) in zip(sorted(a.optimizer.state_dict()["state"].items()),
                              sorted(c.optimizer.state_dict()["state"].items())):
        assert all(torch.equal(x[key], y[key]) for key in x)
    na = mix_a.sample(10, ra["rng"])
    nc = mix_c.sample(10, rc["rng"])
    for k in na:
        np.testing.assert_array_equal(na[k], nc[k])
    # the pinned stage-2 checkpoint survives pruning
    assert [p.name for p in list_checkpoints(tmp_path / "b")][0] == "checkpoint-00000004"
    # the same update from here: the agent's own random streams (augmentation) were restored too
    from vispre.rl.agent import to_torch

    ma, mc_ = a.update(to_torch(na, "cpu")), c.update(to_torch(nc, "cpu"))
    assert ma == mc_


def test_continuous_cql_regulariser_on_the_agents_own_samples():
    """Continuous actions: the agent's CQL term equals the importance-sampled logsumexp recomputed on the same
    draws (the agent's generator replayed: 4 next actions, 4 policy actions, 4 uniform actions per state)."""
    torch.manual_seed(0)
    cfg = CQLConfig(hidden=[8], num_tasks=1, colour_jitter=False, augment_pad=0)
    agent = CQL(FeatureEncoder(3), ActionSpace(False, 2), cfg).configure(seed=3)
    batch = {"observations": torch.randn(3, 1, 3), "next_observations": torch.randn(3, 1, 3),
             "actions": torch.rand(3, 2) * 2 - 1, "rewards": torch.tensor([-1.0, -1.0, 10.0]),
             "masks": torch.tensor([1.0, 1.0, 0.0]), "mc_returns": torch.tensor([2.0, -3.0, 10.0]),
             "task": torch.zeros(3, dtype=torch.long)}
    state = agent.generator.get_state()
    _, m = agent.losses(batch)
    agent.generator.set_state(state)
    with torch.no_grad():
        x = torch.cat([batch["observations"].flatten(1), torch.ones(3, 1)], 1)
        xn = torch.cat([batch["next_observations"].flatten(1), torch.ones(3, 1)], 1)
        a_next, _ = agent.policy.sample(xn, agent.generator, 4)
        t = agent.critic_target.module
        y = batch["rewards"] + 0.96 * batch["masks"] * t.q_many(xn, a_next).min(0).values.max(-1).values
        a_pi, log_pi = agent.policy.sample(x, agent.generator, 4)
        u = torch.rand((3, 4, 2), generator=agent.generator) * 2 - 1
        q_data = agent.critic.q_at(x, batch["actions"])
        q_pi = torch.maximum(agent.critic.q_many(x, a_pi), batch["mc_returns"][None, :, None])
        cat = torch.cat([q_pi - log_pi[None], agent.critic.q_many(x, u) - 2 * math.log(0.5)], -1)
        cql = (torch.logsumexp(cat, -1) - q_data).mean()
        td = (q_data - y).square().mean()
    assert m["cql_loss"].item() == pytest.approx(cql.item(), rel=1e-5)
    assert m["td_loss"].item() == pytest.approx(td.item(), rel=1e-5)


def test_tanh_gaussian_log_prob_matches_torch():
    from torch.distributions import Normal, TransformedDistribution
    from torch.distributions.transforms import TanhTransform

    from vispre.rl.cql import TanhGaussian

    torch.manual_seed(0)
    pol = TanhGaussian(4, 2, [8])
    x = torch.randn(5, 4)
    a, logp = pol.sample(x, torch.Generator().manual_seed(1))
    mu, log_std = pol.net(x).chunk(2, -1)
    dist = TransformedDistribution(Normal(mu, log_std.clamp(-5, 2).exp()), [TanhTransform()])
    torch.testing.assert_close(logp, dist.log_prob(a.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1), rtol=1e-3, atol=1e-3)


def test_vptr_runner_stages_on_minigrid(tmp_path):
    """The recipe path end to end on tiny generated MiniGrid data: stage 2 on the prior tasks, the pinned stage-2
    checkpoint, stage 3 at 90/10, the target-only arm on target data alone, a held-out evaluation."""
    from vispre.rl.vptr import load_vptr_config, run_vptr

    gen = "val_episodes: 1, kind: noisy, epsilons: [0.1], max_steps: 40"
    recipe = tmp_path / "vptr.yaml"
    recipe.write_text(f"""
kind: vptr
env: {{kind: minigrid, name: simple_crossing, eval_seed: 2000000, holdout_layouts: 2}}
sources:
  - {{name: fourrooms, task: 0, generate: {{task: fourrooms, episodes: 3, {gen}, seed: 1}}}}
  - {{name: target, task: 1, target: true, generate: {{task: simple_crossing, episodes: 3, {gen}, seed: 2}}}}
agent: {{name: cql, batch_size: 8, num_tasks: 2, hidden: [16]}}
stage2_steps: 4
stage3_steps: 3
arms: [{{name: scratch, kind: scratch}}, {{name: target_only, kind: scratch, multitask: false}}]
seeds: [0]
eval: {{episodes: 2, num_envs: 2, max_steps: 10}}
output_dir: {tmp_path / "out"}
threads: 1
""")
    results = run_vptr(load_vptr_config(recipe))
    assert {a: s["n"] for a, s in results["summary"].items()} == {"scratch": 1, "target_only": 1}
    assert all(0.0 <= r["success"] <= 1.0 and r["episodes"] == 2 for r in results["runs"])
    run = tmp_path / "out" / "runs" / "scratch" / "seed0"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-00000004", "checkpoint-00000007"]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 7 and last["weights"] == pytest.approx([0.9, 0.1])
    only = json.loads((tmp_path / "out" / "runs" / "target_only" / "seed0" / "metrics.jsonl").read_text()
                      .splitlines()[-1])
    assert only["weights"] == [1.0]


def test_task_embeddings_file_conditions_critic_and_actor(tmp_path):
    """task_embeddings: row t of the .npy (e.g. open_clip text embeddings of the instructions) is task t's
    condition, in place of the one-hot id."""
    table = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    np.save(tmp_path / "emb.npy", table)
    cfg = CQLConfig(hidden=[8], task_embeddings=str(tmp_path / "emb.npy"))
    agent = CQL(FeatureEncoder(4), ActionSpace(True, 3), cfg)
    torch.testing.assert_close(agent.condition(torch.tensor([2, 0])), torch.from_numpy(table[[2, 0]]))
    assert agent.critic.q.q1[0].in_features == 4 + 5 and agent.policy[0].in_features == 4 + 5
