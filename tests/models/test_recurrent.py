"""The rnn: an LSTM reading the image row by row, whose `bn` keeps BN statistics per time step
(Cooijmans et al. 2016) exactly as a separate nn.BatchNorm1d per step would; its other variants
do their operations in order; it trains, resumes, serves and collapses through the one path."""

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.models.batchnorm import EPSILON
from bnlab.models.checkpoint import load_net, load_state, save_net, save_state
from bnlab.models.collapse import one_at_a_time
from bnlab.models.data import Splits, to_inputs
from bnlab.models.inference import ServedNet
from bnlab.models.network import Architecture, initial_weights, stack_class
from bnlab.models.recurrent import GAMMA, LSTMStack
from bnlab.models.trainer import Cell, Trainer, TrainingSpec, build_trainer
from bnlab.vocabulary import RNN_VARIANTS, Variant
from tests.models.conftest import CPU, LONE

# Compared in float64: BN divides by each step's spread, and at the first steps the hidden-to-
# hidden term's is tiny (h_0 = 0), so float32's roundings come out amplified up to
# 1/sqrt(epsilon) = 30x, and carried through 28 steps, to 2e-5 of a logit, by a factor that
# depends on the draw. In float64 (epsilon 2.2e-16) the same amplification leaves them below
# 1e-10 of values of unit scale (1e-9 relative for the sums over a batch), far below any
# mistake in the arithmetic. The trained rnn tests run in float32.
TOLERANCE = {"atol": 1e-10, "rtol": 1e-9}
TINY = Architecture("tanh", (), rnn_hidden=3, sequence="rows")
RNN = Architecture("tanh", (), rnn_hidden=16, sequence="rows")
SHORT = TrainingSpec(learning_rate=0.5, training_batches=40, batches_per_sample=20)
BATCH = 16


def tiny_stack(variant: Variant, nets: int = 2) -> LSTMStack:
    """A tiny rnn's stack in float64 (see TOLERANCE)."""
    weights = [initial_weights(TINY, 0.5, seed) for seed in range(nets)]
    stack = stack_class(TINY)(TINY, variant, weights).double()
    assert isinstance(stack, LSTMStack)
    with torch.no_grad():  # off their starting values, so that one in the wrong place shows
        stack.bias.normal_()
        for norm in stack.norms.values():
            norm.gamma.uniform_(0.5, 1.5)
            if norm.beta is not None:
                norm.beta.normal_()
    return stack


class ReferenceLSTM(nn.Module):
    """The paper's BN-LSTM (or LN-LSTM, or none) written the obvious way, one net: a module per
    normalized term and, for BN, per time step."""

    def __init__(self, state: dict[str, Tensor], variant: Variant, steps: int) -> None:
        super().__init__()
        self.hidden = state["weight.1"].shape[1]
        self.w_x = nn.Parameter(state["weight.0"][:, : -self.hidden].clone())
        self.w_h = nn.Parameter(state["weight.0"][:, -self.hidden :].clone())
        self.bias = nn.Parameter(state["bias"].clone())
        self.w_out = nn.Parameter(state["weight.1"].clone())
        self.b_out = nn.Parameter(state["output_bias"].clone())
        self.variant = variant
        self.norms = nn.ModuleDict()
        if variant == "plain":
            return
        prefix = "bn" if variant == "bn" else "norm"
        for term, width in (("x", 4 * self.hidden), ("h", 4 * self.hidden), ("c", self.hidden)):
            count = steps if variant == "bn" else 1
            modules = [self._norm(width).to(state["weight.0"].dtype) for _ in range(count)]
            for module in modules:
                with torch.no_grad():
                    module.weight.copy_(state[f"{prefix}.{term}.gamma"])
                    module.bias.copy_(state.get(f"{prefix}.{term}.beta", torch.zeros(width)))
                module.bias.requires_grad_(term == "c")  # the paper's BN_x, BN_h: no beta
            self.norms[term] = nn.ModuleList(modules)

    def _norm(self, width: int) -> nn.Module:
        if self.variant == "bn":  # torch's momentum is the weight of the batch: the study's 0.01
            return nn.BatchNorm1d(width, eps=EPSILON, momentum=0.01)
        return nn.LayerNorm(width, eps=EPSILON)

    def _n(self, term: str, t: int, x: Tensor) -> Tensor:
        if term not in self.norms:
            return x
        modules = self.norms[term]
        y: Tensor = modules[min(t, len(modules) - 1)](x)
        return y

    def forward(self, sequence: Tensor) -> Tensor:
        h = c = sequence.new_zeros(sequence.shape[0], self.hidden)
        for t in range(sequence.shape[1]):
            z = self._n("x", t, sequence[:, t] @ self.w_x.T)
            z = z + self._n("h", t, h @ self.w_h.T) + self.bias
            i, f, g, o = z.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self._n("c", t, c))
        return h @ self.w_out.T + self.b_out


def images(seed: int, count: int = BATCH) -> Tensor:
    """Random [0, 1] images, float64 (see TOLERANCE)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 28, 28, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("variant", RNN_VARIANTS)
def test_each_variant_equals_the_lstm_written_the_obvious_way(variant: Variant) -> None:
    """Training forward, every parameter's gradient, the running statistics per step after a
    few batches, then population inference: each net of a stack of two equals the reference
    built from its state (for `bn`: a separate nn.BatchNorm1d per step and term)."""
    ours = tiny_stack(variant)
    theirs = [ReferenceLSTM(ours.net_state(n), variant, 28).double().train() for n in range(2)]
    batch = images(0)
    logits = ours(batch, "train")
    upstream = torch.randn_like(logits)
    (logits * upstream).sum().backward()
    grads = {name: p.grad for name, p in ours.named_parameters()}
    for n, reference in enumerate(theirs):
        expected = reference(batch)
        torch.testing.assert_close(logits[n], expected, **TOLERANCE)
        (expected * upstream[n]).sum().backward()
        assert_same_gradients(grads, n, reference)
    with torch.no_grad():
        for seed in (1, 2, 3):
            ours(images(seed), "train")
            for reference in theirs:
                reference(images(seed))
    for n, reference in enumerate(theirs):
        state = ours.net_state(n)
        if variant == "bn":  # statistics per step, moved as each step's nn.BatchNorm1d's did
            for term, modules in reference.norms.items():
                for stat in ("running_mean", "running_var"):
                    expected = torch.stack([getattr(m, stat) for m in modules])
                    torch.testing.assert_close(state[f"bn.{term}.{stat}"], expected, **TOLERANCE)
        reference.eval()
        torch.testing.assert_close(
            ours(images(4), "population")[n], reference(images(4)), **TOLERANCE
        )


def assert_same_gradients(grads: dict[str, Tensor | None], n: int, theirs: ReferenceLSTM) -> None:
    """Net `n`'s gradients in `grads` (a stack's, by parameter name) are the reference's."""
    w_x, w_h = grads["weights.0"][n].split([28, 3], dim=1)
    torch.testing.assert_close(w_x, theirs.w_x.grad, **TOLERANCE)
    torch.testing.assert_close(w_h, theirs.w_h.grad, **TOLERANCE)
    torch.testing.assert_close(grads["bias"][n, 0], theirs.bias.grad, **TOLERANCE)
    torch.testing.assert_close(grads["weights.1"][n], theirs.w_out.grad, **TOLERANCE)
    for term, modules in theirs.norms.items():
        # one gamma shared by the steps: the sum of the per-step modules' gradients
        per_step = torch.stack([m.weight.grad for m in modules]).sum(dim=0)
        torch.testing.assert_close(grads[f"norms.{term}.gamma"][n, 0], per_step, **TOLERANCE)
    if "c" in theirs.norms:
        per_step = torch.stack([m.bias.grad for m in theirs.norms["c"]]).sum(dim=0)
        torch.testing.assert_close(grads["norms.c.beta"][n, 0], per_step, **TOLERANCE)


def test_plain_is_torchs_lstm() -> None:
    """The gates in nn.LSTM's order and its two biases in one: the same logits as nn.LSTM and
    a linear layer on its last hidden state."""
    ours = tiny_stack("plain", nets=1)
    state = ours.net_state(0)
    lstm = nn.LSTM(28, 3, batch_first=True).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(state["weight.0"][:, :28])
        lstm.weight_hh_l0.copy_(state["weight.0"][:, 28:])
        lstm.bias_ih_l0.copy_(state["bias"])
        lstm.bias_hh_l0.zero_()
    batch = images(5)
    _, (last, _) = lstm(batch)
    expected = F.linear(last[0], state["weight.1"], state["output_bias"])
    torch.testing.assert_close(ours(batch, "population")[0], expected, **TOLERANCE)


# The fused op against the formula, both in float32 (unit roundoff u = 2**-24 = 6e-8): each
# gate's pre-activation is a dot of 28 + 16 terms, off by at most 44u of its terms' scale (the
# standard bound), and the activations do not amplify; 28 steps add up to 28 such errors
# (weights of std 0.5 do not amplify them either): 44 * 28 * u = 7e-5 of a logit's scale.
# The gradients run back through the same 28 steps: twice that per image, and a weight's
# gradient sums BATCH images' whose errors add while the sum may cancel: BATCH times more of
# the sum's own scale.
FUSED_ERROR = 44 * 28 * 2**-24


def test_plain_through_torchs_lstm_op_is_the_formula() -> None:
    """Without probes, `plain` runs torch's own LSTM op (oneDNN's kernel on a CPU in float32),
    which does not expose the pre-activations; with them, the formula step by step. Both give
    the same logits and gradients, for each net of a stack of two, up to float32 rounding."""
    weights = [initial_weights(RNN, 0.5, seed) for seed in range(2)]
    stack = stack_class(RNN)(RNN, "plain", weights)
    with torch.no_grad():
        stack.bias.normal_()
    batch = images(7).float()
    upstream = torch.randn(2, BATCH, 10)
    results = []
    for pre_activations in (None, []):
        stack.zero_grad()
        logits = stack(batch, "train", pre_activations)
        (logits * upstream).sum().backward()
        grads = {name: p.grad for name, p in stack.named_parameters()}
        results.append((logits.detach(), grads))
    (fused, fused_grads), (formula, formula_grads) = results
    scale = formula.abs().max().item()
    torch.testing.assert_close(fused, formula, rtol=0, atol=FUSED_ERROR * scale)
    for name, grad in formula_grads.items():
        scale = grad.abs().max().item()
        atol = 2 * BATCH * FUSED_ERROR * scale
        torch.testing.assert_close(fused_grads[name], grad, rtol=0, atol=atol)


def test_bn_starts_as_the_paper_says() -> None:
    stack = stack_class(TINY)(TINY, "bn", [initial_weights(TINY, 0.05, 0)])
    state = stack.net_state(0)
    for term in ("x", "h", "c"):
        assert torch.all(state[f"bn.{term}.gamma"] == GAMMA)
        assert state[f"bn.{term}.running_mean"].shape == (28, 12 if term != "c" else 3)
    assert "bn.x.beta" not in state and "bn.h.beta" not in state  # b takes their place
    assert torch.all(state["bn.c.beta"] == 0) and torch.all(state["bias"] == 0)


def test_beyond_the_longest_sequence_trained_the_last_steps_statistics() -> None:
    """Trained on the first 4 rows only: steps 0-3 have statistics of their own, the steps
    after them are left as they started, and inference on all 28 rows uses step 3's for them."""
    ours = tiny_stack("bn", nets=1)
    with torch.no_grad():
        for seed in range(5):
            ours.read(images(seed)[:, :4], "train")
    state = ours.net_state(0)
    assert int(state["bn.h.steps_trained"]) == 4
    assert not torch.equal(state["bn.x.running_mean"][3], torch.zeros(12))
    assert torch.equal(state["bn.x.running_mean"][4:], torch.zeros(24, 12))
    assert torch.equal(state["bn.x.running_var"][4:], torch.ones(24, 12))
    # The same net with step 3's statistics copied to every later step, all 28 counted trained
    copied = {name: tensor.clone() for name, tensor in state.items()}
    for name in [n for n in copied if "running" in n]:
        copied[name][4:] = copied[name][3]
    for name in [n for n in copied if n.endswith("steps_trained")]:
        copied[name].fill_(28)
    explicit = copy.deepcopy(ours)
    explicit.load_net_state(0, copied)
    batch = images(6)
    torch.testing.assert_close(
        ours(batch, "population"), explicit(batch, "population"), **TOLERANCE
    )


def test_a_variant_the_rnn_does_not_take_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="plain, bn, layer_norm, not group_norm"):
        stack_class(TINY)(TINY, "group_norm", [initial_weights(TINY, 0.05, 0)])


def rnn_trainer(splits: Splits, spec: TrainingSpec = SHORT) -> Trainer:
    return build_trainer(RNN, [Cell(LONE, spec)], splits, CPU, variants=RNN_VARIANTS)


def run(trainer: Trainer, **hooks) -> list:
    samples: list = []
    trainer.run(samples.append, **hooks)
    return samples


@pytest.fixture(scope="module")
def trained(splits: Splits) -> Trainer:
    """The three rnn variants trained side by side: read it, don't run it again."""
    trainer = rnn_trainer(
        splits, TrainingSpec(learning_rate=0.5, training_batches=800, batches_per_sample=400)
    )
    trainer.run(lambda sample: None)
    return trainer


def test_the_variants_start_from_the_same_weights_and_learn(
    splits: Splits, trained: Trainer
) -> None:
    first = initial_weights(RNN, SHORT.weight_std, SHORT.seed)
    fresh = rnn_trainer(splits)
    for variant in RNN_VARIANTS:
        assert torch.equal(fresh.net_state(LONE, variant)["weight.0"], first[0])
    accuracies = trained.test_accuracies(splits.test)[LONE]
    # 800 steps: well above chance (0.1). A plain LSTM under SGD starts slowly, and the LN-LSTM
    # (gamma 0.1) sits near chance for its first few hundred steps: which step it leaves at
    # depends on float rounding (CPU kernels), and at 200 or 500 steps it had on some, not all.
    assert all(accuracies[variant][0] > 0.25 for variant in RNN_VARIANTS), accuracies


def test_running_statistics_per_step_after_training(trained: Trainer) -> None:
    """Every one of the 28 steps has statistics of its own, and they differ step by step."""
    state = trained.net_state(LONE, "bn")
    assert int(state["bn.x.steps_trained"]) == 28
    for term in ("x", "h", "c"):
        means = state[f"bn.{term}.running_mean"]
        assert len({tuple(row.tolist()) for row in means[1:]}) == 27, term
    # step 0's hidden-to-hidden term is W_h h_0 = 0 for every image: nothing to normalize
    assert torch.equal(state["bn.h.running_mean"][0], torch.zeros(64))


def test_resumed_training_equals_uninterrupted_training(splits: Splits, tmp_path: Path) -> None:
    uninterrupted = rnn_trainer(splits)
    full_curve = run(uninterrupted)
    interrupted = rnn_trainer(splits)
    assert interrupted.run(lambda s: None, lambda: interrupted.step == 20) == "cancelled"
    save_state(tmp_path / "state.safetensors", *interrupted.state(LONE))
    resumed = rnn_trainer(splits)
    assert resumed.restore({LONE: load_state(tmp_path / "state.safetensors")})
    assert run(resumed) == [s for s in full_curve if s.step > 20]
    for variant in RNN_VARIANTS:
        state, expected = resumed.net_state(LONE, variant), uninterrupted.net_state(LONE, variant)
        assert state.keys() == expected.keys()
        for name, tensor in state.items():
            assert torch.equal(tensor, expected[name]), f"{variant} {name}"


def test_checkpoint_serves_the_same_net(trained: Trainer, tmp_path: Path) -> None:
    probe = to_inputs(torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8))
    for variant in RNN_VARIANTS:
        path = tmp_path / f"{variant}.safetensors"
        save_net(path, trained.net_state(LONE, variant), variant=variant, arch=RNN)
        served, meta = load_net(path)
        assert meta["architecture"]["sequence"] == "rows"
        kept = LSTMStack.from_net_states(RNN, variant, [trained.net_state(LONE, variant)])
        assert torch.equal(served(probe, "population"), kept(probe, "population"))


def test_bn_collapses_on_one_image_in_batch_mode_and_layer_norm_does_not(
    trained: Trainer, splits: Splits
) -> None:
    """One image at a time with batch statistics, each BN normalizes every value to its beta:
    the input never reaches the state, and every image gets the same class. LayerNorm has no
    batch to depend on; with population statistics BN classifies."""
    test_images = splits.test.images[:50]
    nets = {v: ServedNet(stack_of(trained, v)) for v in RNN_VARIANTS}
    assert [nets[v].mode_applies for v in RNN_VARIANTS] == [False, True, False]
    assert one_at_a_time(nets["bn"].stack, test_images, "batch").unique().numel() == 1
    assert one_at_a_time(nets["bn"].stack, test_images, "population").unique().numel() > 1
    layer_norm = nets["layer_norm"].stack
    assert torch.equal(
        one_at_a_time(layer_norm, test_images, "batch"),
        one_at_a_time(layer_norm, test_images, "population"),
    )
    # BN per time step has no one layer to fold into: fused serves it as population
    fused, population = (nets["bn"].predict(test_images[:5], m) for m in ("fused", "population"))
    assert fused.probabilities == population.probabilities


def stack_of(trainer: Trainer, variant: Variant) -> LSTMStack:
    return LSTMStack.from_net_states(RNN, variant, [trainer.net_state(LONE, variant)])
