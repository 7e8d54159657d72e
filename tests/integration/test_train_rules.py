"""The method's rules where training applies them (docs/method.md, "Between steps", "Optimisation").

Unit tests pin each helper (`DeepLabV3.freeze_bn`, `parameter_groups`,
`lr_factor`, ...); these pin their use: a real `train_step` on the toy dataset,
observed from the inside. The loss function is wrapped to record, at every
iteration, the student's module modes, the learning rates, the loss weights and
the teacher's outputs, and then computes the real loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
import torch
from torch import nn

import dkd_core.train as train_module
from dkd_core.checkpoint import load_model_checkpoint
from dkd_core.model import DeepLabV3
from tests.integration.conftest import toy_config

pytestmark = pytest.mark.integration

ITERATIONS = 3


@dataclass
class Observed:
    """What one probed `train_step` showed from the inside."""

    model: DeepLabV3 | None = None
    teacher: DeepLabV3 | None = None
    # (weight, bias) of each head and of the auxiliary classifier, right after building
    built_heads: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    built_aux: tuple[torch.Tensor, torch.Tensor] | None = None
    optimizer: torch.optim.SGD | None = None
    batches_per_epoch: int = 0
    iterations: list[dict] = field(default_factory=list)


def _modes(model: nn.Module, kind) -> list[bool]:
    return [m.training for m in model.modules() if isinstance(m, kind)]


def probed_train_step(config, step: int, patch: pytest.MonkeyPatch) -> Observed:
    seen = Observed()
    real_build = train_module.build_student_and_teacher
    real_losses = train_module.dkd_losses
    real_loader = train_module.train_loader
    real_sgd = torch.optim.SGD

    def build(*args, **kwargs):
        model, teacher = real_build(*args, **kwargs)
        seen.model, seen.teacher = model, teacher
        seen.built_heads = [
            (h.weight.detach().clone(), h.bias.detach().clone()) for h in model.step_heads
        ]
        seen.built_aux = (
            model.aux_head.weight.detach().clone(),
            model.aux_head.bias.detach().clone(),
        )
        return model, teacher

    def loader(*args, **kwargs):
        result = real_loader(*args, **kwargs)
        seen.batches_per_epoch = result[1].batches_per_epoch
        return result

    class RecordingSGD(real_sgd):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.optimizer = self

        def step(self, *args, **kwargs):
            # The gradient an update uses is this iteration's alone (zeroed in between).
            head = seen.model.step_heads[-1].weight
            seen.iterations[-1]["grad_at_step"] = head.grad.detach().clone()
            return super().step(*args, **kwargs)

    def losses(outputs, teacher_outputs, labels, step_, weights):
        model = seen.model
        seen.iterations.append(
            {
                "model_training": model.training,
                "bn_training": _modes(model, nn.modules.batchnorm._BatchNorm),
                "dropout_training": _modes(model, nn.Dropout),
                "lrs": {g["name"]: g["lr"] for g in seen.optimizer.param_groups},
                "weights": weights,
                "teacher_outputs": teacher_outputs,
                "decomposed": outputs.pos is not None,
                "labels": labels.clone(),
                "heads": [h.weight.detach().clone() for h in model.step_heads],
                "aux": model.aux_head.weight.detach().clone(),
            }
        )
        terms = real_losses(outputs, teacher_outputs, labels, step_, weights)
        head = model.step_heads[-1].weight
        (own_grad,) = torch.autograd.grad(terms["total"], head, retain_graph=True)
        seen.iterations[-1]["own_grad"] = own_grad
        seen.iterations[-1]["logits_dtype"] = outputs.logits.dtype
        return terms

    patch.setattr(train_module, "build_student_and_teacher", build)
    patch.setattr(train_module, "dkd_losses", losses)
    patch.setattr(train_module, "train_loader", loader)
    patch.setattr(torch.optim, "SGD", RecordingSGD)
    train_module.train_step(config, step)
    return seen


OVERRIDES = (
    f"train.max_iterations={ITERATIONS}",
    "train.log_every=1",
    "loss.pos_weight=3",  # distinct per step, to see which one each step uses
    "loss.pos_weight_incremental=7",
)


@pytest.fixture(scope="module")
def run(toy_root, tmp_path_factory):
    """Step 0 and step 1 of the toy task, probed; the default optimiser settings."""
    output = tmp_path_factory.mktemp("rules") / "run"
    config = toy_config(toy_root, output, *OVERRIDES)
    with pytest.MonkeyPatch.context() as patch:
        step0 = probed_train_step(config, 0, patch)
    with pytest.MonkeyPatch.context() as patch:
        step1 = probed_train_step(config, 1, patch)
    return config, output, step0, step1


# -- step 0 ---------------------------------------------------------------------------------


def test_step0_trains_bn_and_dropout_and_has_no_teacher(run):
    _, _, step0, _ = run
    assert len(step0.iterations) == ITERATIONS
    for it in step0.iterations:
        assert it["model_training"] and all(it["bn_training"]) and all(it["dropout_training"])
        assert it["teacher_outputs"] is None and not it["decomposed"]
        assert it["weights"].pos_weight == 3.0


def test_step0_optimiser_groups_learning_rates_and_weight_decay(run):
    config, _, step0, _ = run
    groups = step0.optimizer.param_groups
    lr = config.optim.lr
    assert [g["name"] for g in groups] == ["backbone", "aspp", "classifiers"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([lr, 10 * lr, 10 * lr])
    assert [g["weight_decay"] for g in groups] == [1e-4, 1e-4, 1e-4]
    assert all(g["momentum"] == 0.9 and g["nesterov"] is True for g in groups)
    # Every parameter trains at step 0, BN included.
    trained = {id(p) for g in groups for p in g["params"]}
    assert trained == {id(p) for p in step0.model.parameters()}


def test_step0_backbone_bn_momentum_is_0_01_and_aspp_bn_keeps_torch_default(run):
    _, _, step0, _ = run
    backbone = [m.momentum for m in step0.model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    aspp = [m.momentum for m in step0.model.aspp.modules() if isinstance(m, nn.BatchNorm2d)]
    assert backbone and set(backbone) == {0.01}
    assert aspp and set(aspp) == {0.1}


def test_poly_schedule_with_power_0_9_is_stepped_every_iteration(run):
    config, _, step0, step1 = run
    for seen, base in ((step0, config.optim.lr), (step1, config.optim.lr_incremental)):
        total = config.optim.epochs * seen.batches_per_epoch  # the schedule spans every epoch
        assert total > ITERATIONS
        for i, it in enumerate(seen.iterations):
            factor = (1 - i / total) ** 0.9
            assert it["lrs"]["backbone"] == pytest.approx(base * factor, rel=1e-12)
            assert it["lrs"]["aspp"] == pytest.approx(10 * base * factor, rel=1e-12)


# -- between steps ----------------------------------------------------------------------------


def test_step1_new_head_starts_as_the_auxiliary_classifier(run):
    _, _, _, step1 = run
    aux, aux_bias = step1.built_aux  # [1, D, 1, 1], [1]
    new_head, new_bias = step1.built_heads[-1]  # [|C_1|, D, 1, 1], [|C_1|]
    assert torch.equal(new_head, aux.expand_as(new_head))
    assert torch.equal(new_bias, aux_bias.expand_as(new_bias))
    # ... and that is what the first iteration trains from.
    first = step1.iterations[0]
    assert torch.equal(first["heads"][-1], first["aux"].expand_as(first["heads"][-1]))


def test_with_the_ac_loss_off_the_new_head_is_random(run):
    config, output, _, _ = run
    no_ac = replace(config, loss=replace(config.loss, ac=0.0))
    step1 = train_module.task_of(no_ac).step(1)
    model, _ = train_module.build_student_and_teacher(
        no_ac, step1, str(output / "step_0" / "checkpoint")
    )
    new = model.step_heads[-1].weight
    assert not torch.equal(new, model.aux_head.weight.expand_as(new))
    # Kaiming-normal: std sqrt(2 / fan_in) over the D inputs of a 1x1 conv.
    assert new.std().item() == pytest.approx((2 / new.shape[1]) ** 0.5, rel=0.5)


def test_step1_student_and_teacher_start_from_step0_final_weights(run):
    _, output, _, step1 = run
    step0_model, _ = load_model_checkpoint(str(output / "step_0" / "checkpoint"))
    expected = step0_model.state_dict()
    teacher = step1.teacher.state_dict()
    assert teacher.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(teacher[key].cpu(), value), key
    # The student's shared part was loaded too (its trained values moved since; the
    # frozen BN statistics did not).
    student = step1.model.state_dict()
    for key, value in expected.items():
        if "running" in key:
            assert torch.equal(student[key].cpu(), value), key


def test_step1_bn_and_dropout_stay_frozen_inside_the_training_loop(run):
    _, _, _, step1 = run
    assert len(step1.iterations) == ITERATIONS
    for it in step1.iterations:
        assert it["model_training"]  # the model trains ...
        assert it["bn_training"] and not any(it["bn_training"])  # ... with BN in eval mode
        assert it["dropout_training"] and not any(it["dropout_training"])  # ... and no dropout


def test_step1_distils_from_a_frozen_teacher_with_decomposed_terms(run):
    _, _, _, step1 = run
    assert not step1.teacher.training
    assert not any(p.requires_grad for p in step1.teacher.parameters())
    for it in step1.iterations:
        assert it["decomposed"] and it["teacher_outputs"] is not None
        assert it["teacher_outputs"].pos is not None
        assert it["weights"].pos_weight == 7.0
        assert (it["weights"].kd, it["weights"].dkd_pos, it["weights"].dkd_neg) == (5, 5, 5)
        assert (it["weights"].mbce, it["weights"].ac) == (1, 1)


def test_step1_weight_decay_only_on_the_new_classifier_and_bn_affine_left_out(run):
    config, _, _, step1 = run
    groups = {g["name"]: g for g in step1.optimizer.param_groups}
    lr = config.optim.lr_incremental
    assert list(groups) == ["backbone", "aspp", "old_classifiers", "new_classifier"]
    assert {k: g["weight_decay"] for k, g in groups.items()} == {
        "backbone": 0.0,
        "aspp": 0.0,
        "old_classifiers": 0.0,
        "new_classifier": 1e-4,
    }
    assert [g["initial_lr"] for g in groups.values()] == pytest.approx([lr, *[10 * lr] * 3])
    assert all(g["momentum"] == 0.9 and g["nesterov"] is True for g in groups.values())
    model = step1.model
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(groups["new_classifier"]["params"]) == ids(model.step_heads[-1].parameters())
    bn = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    trained = {id(p) for g in groups.values() for p in g["params"]}
    assert bn and not ids(bn) & trained
    convs = [p for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()]
    assert ids(convs) == trained


def test_step1_labels_keep_only_the_new_class(run):
    _, _, _, step1 = run
    # Toy 4-1 step 1: channel 5 is the new class; old classes became background.
    for it in step1.iterations:
        values = set(it["labels"].unique().tolist())
        assert values <= {0, 5, 255} and 5 in values


def test_step0_model_is_built_with_the_methods_head(run):
    _, _, step0, _ = run
    model = step0.model
    assert model.aspp.dropout.p == 0.1
    assert [b.conv.dilation for b in model.aspp.branches[1:]] == [(12, 12), (24, 24), (36, 36)]
    assert model.classes_per_step == (4,) and model.aux_head.out_channels == 1


def test_each_update_uses_only_its_own_gradient_in_fp32_on_cpu(run):
    _, _, step0, step1 = run
    for seen in (step0, step1):
        for it in seen.iterations:
            assert it["logits_dtype"] == torch.float32  # autocast is for CUDA only
            torch.testing.assert_close(it["grad_at_step"], it["own_grad"], rtol=1e-5, atol=1e-7)


def test_step1_without_memory_replays_nothing(run):
    config, output, _, _ = run
    assert config.data.memory_size == 0
    assert not (output / "step_1" / "memory.json").exists()
