"""The built-in distillation methods: metadata, shapes, gradients and the properties their formulas imply.

Each method's value against its published formula is checked in test_method_references.py; here are
the contract every method keeps (any widths and sizes, gradients to the student only, adapters
trained) and behaviours that follow from the formulas (T² scaling, invariances, pooling). Reference
values are computed in float64 numpy with explicit loops; the methods run in float64 too.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import autokd.methods.builtin as plugins
import numpy as np
import pytest
import torch

from autokd.methods import METHODS, DistillInputs, ModelInfo, load_methods

METHODS.load()

# Every built-in method and its kind.
BUILTIN = {
    "hinton_kd": "response",
    "dkd": "response",
    "dist": "response",
    "fitnets": "feature",
    "attention_transfer": "feature",
    "nst": "feature",
    "rkd": "relation",
    "pkt": "relation",
    "sp": "relation",
    "self_distillation_exits": "self",
    "tf_kd": "self",
}
NAMES = sorted(BUILTIN)
DTYPE = torch.float64


# ---------------------------------------------------------------- helpers


def leaf(array) -> torch.Tensor:
    """A float64 leaf tensor that records gradients."""
    return torch.as_tensor(np.asarray(array, dtype=np.float64)).clone().requires_grad_(True)


def randn(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def make(name: str, student: ModelInfo | None = None, teacher: ModelInfo | None = None, **hp: float):
    """A float64 instance of method ``name``."""
    return METHODS.get(name)(student, teacher, **hp).to(DTYPE)


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) of two 1-D distributions, term by term."""
    return sum(p[k] * math.log(p[k] / q[k]) for k in range(len(p)) if p[k] > 0)


def np_pool(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Block average of an (N, C, H, W) array to ``size`` (H and W divisible by it)."""
    n, c, h, w = x.shape
    bh, bw = h // size[0], w // size[1]
    out = np.zeros((n, c, *size))
    for i in range(size[0]):
        for j in range(size[1]):
            out[:, :, i, j] = x[:, :, i * bh : (i + 1) * bh, j * bw : (j + 1) * bw].mean(axis=(2, 3))
    return out


def logits_inputs(student, teacher, targets) -> DistillInputs:
    return DistillInputs(
        student_logits=leaf(student), targets=torch.as_tensor(targets), teacher_logits=leaf(teacher)
    )


def feature_inputs(student_maps, teacher_maps, classes: int = 5) -> DistillInputs:
    n = student_maps[0].shape[0]
    return DistillInputs(
        student_logits=leaf(randn(n, classes, seed=7)),
        targets=torch.arange(n) % classes,
        teacher_logits=leaf(randn(n, classes, seed=8)),
        student_features=[leaf(m) for m in student_maps],
        teacher_features=[leaf(m) for m in teacher_maps],
    )


def stage_shapes(cls, channels: int, size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(C, H, W) of each stage a plugin asks for: channels double and maps halve stage by stage."""
    k = len(set(cls.needs_features))
    return [(channels * 2**i, max(1, size[0] // 2**i), max(1, size[1] // 2**i)) for i in range(k)]


def synthetic(name: str, student_channels: int, teacher_channels: int, student_size, teacher_size, batch=4):
    """A plugin sized for the two models and one batch of random inputs for it."""
    cls = METHODS.get(name)
    classes = 5
    s_shapes = stage_shapes(cls, student_channels, student_size)
    t_shapes = stage_shapes(cls, teacher_channels, teacher_size)
    plugin = make(
        name,
        ModelInfo(tuple(c for c, _, _ in s_shapes), classes),
        ModelInfo(tuple(c for c, _, _ in t_shapes), classes),
    )
    inputs = DistillInputs(
        student_logits=leaf(randn(batch, classes, seed=1)),
        targets=torch.arange(batch) % classes,
        teacher_logits=leaf(randn(batch, classes, seed=2)),
        student_features=[leaf(randn(batch, *s, seed=10 + i)) for i, s in enumerate(s_shapes)],
        teacher_features=[leaf(randn(batch, *t, seed=20 + i)) for i, t in enumerate(t_shapes)],
    )
    return plugin, inputs


def student_tensors(inputs: DistillInputs) -> list[torch.Tensor]:
    return [inputs.student_logits, *inputs.student_features]


def teacher_tensors(inputs: DistillInputs) -> list[torch.Tensor]:
    return [inputs.teacher_logits, *inputs.teacher_features]


SHAPES = {
    "student_narrower_and_smaller": (4, 16, (8, 8), (16, 16)),
    "student_wider_and_larger": (16, 4, (16, 16), (8, 8)),
    "same_shapes": (8, 8, (8, 8), (8, 8)),
    "non_square_student": (6, 10, (8, 12), (8, 8)),
}


# ---------------------------------------------------------------- every plugin


def test_load_methods_registers_every_builtin_plugin():
    load_methods()
    assert set(BUILTIN) <= set(METHODS.names())


def test_every_decorated_class_in_the_plugins_folder_is_registered_from_its_file():
    load_methods()
    folder = Path(plugins.__path__[0])
    for file in folder.glob("*.py"):
        for name in re.findall(r"@register_method\(\"([^\"]+)\"\)", file.read_text()):
            assert name in METHODS, f"{name} from {file.name} is not registered"
            assert Path(METHODS.origin(name)).resolve() == file.resolve()


@pytest.mark.parametrize("name", NAMES)
def test_method_has_its_kind(name):
    assert METHODS.get(name).kind == BUILTIN[name]


@pytest.mark.parametrize("name", NAMES)
def test_docstring_names_the_kind_and_cites_a_dated_paper(name):
    cls = METHODS.get(name)
    doc = cls.__doc__ or ""
    # hinton_kd names its kind in its module docstring ("Response distillation: ..."), the others in both.
    module_doc = sys.modules[cls.__module__].__doc__ or ""
    assert BUILTIN[name] in (doc + module_doc).lower()
    assert re.search(r"\b(19|20)\d\d\b", doc), "no year of publication in the docstring"
    assert re.search(r"\b(CVPR|ICCV|ECCV|ICLR|NeurIPS|arXiv)\b", doc), "no venue in the docstring"


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameter_ranges_are_open_and_log_ranges_positive(name):
    for key, spec in METHODS.get(name).hyperparameters.items():
        assert spec.low < spec.high, key
        assert not spec.log or spec.low > 0, key


# The methods that soften logits by a temperature; each declares its own, the others none.
SOFTENING = {"hinton_kd", "dkd", "dist", "tf_kd", "self_distillation_exits"}


def test_exactly_the_methods_that_soften_logits_declare_a_temperature():
    assert {n for n in NAMES if "temperature" in METHODS.get(n).hyperparameters} == SOFTENING


@pytest.mark.parametrize("name", sorted(SOFTENING))
def test_temperatures_are_searched_from_1_to_8(name):
    spec = METHODS.get(name).hyperparameters["temperature"]
    assert (spec.low, spec.high, spec.log) == (1.0, 8.0, False)


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameters_become_attributes_with_their_defaults(name):
    plugin, _ = synthetic(name, 4, 8, (8, 8), (8, 8))
    for key, spec in METHODS.get(name).hyperparameters.items():
        assert getattr(plugin, key) == spec.default


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_loss_is_a_finite_scalar_for_any_widths_and_sizes(name, shape):
    plugin, inputs = synthetic(name, *SHAPES[shape])
    loss = plugin(inputs)
    assert loss.shape == ()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_reach_the_student(name, shape):
    plugin, inputs = synthetic(name, *SHAPES[shape])
    plugin(inputs).backward()
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in student_tensors(inputs))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_no_gradient_reaches_the_teacher(name, shape):
    # The teacher tensors here record gradients on purpose: the method must detach them itself.
    plugin, inputs = synthetic(name, *SHAPES[shape])
    plugin(inputs).backward()
    assert all(t.grad is None for t in teacher_tensors(inputs))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_adapter_parameter(name):
    plugin, inputs = synthetic(name, 4, 16, (8, 8), (16, 16))
    plugin(inputs).backward()
    for key, parameter in plugin.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", [n for n in NAMES if not METHODS.get(n).needs_teacher_logits])
def test_methods_that_need_no_teacher_logits_run_without_them(name):
    plugin, inputs = synthetic(name, 4, 8, (8, 8), (8, 8))
    inputs.teacher_logits = None
    assert torch.isfinite(plugin(inputs))


@pytest.mark.parametrize("name", [n for n in NAMES if not METHODS.get(n).needs_teacher_features])
def test_methods_that_need_no_teacher_features_run_without_them(name):
    plugin, inputs = synthetic(name, 4, 8, (8, 8), (8, 8))
    inputs.teacher_features = []
    assert torch.isfinite(plugin(inputs))


# ---------------------------------------------------------------- hinton_kd

Z_S = np.array([[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.0, 1.5], [-0.7, 0.9, 0.4, 0.0]])
Z_T = np.array([[2.5, -1.0, 0.5, 0.0], [0.0, 1.0, -0.5, 2.0], [1.0, 1.2, -0.3, 0.6]])
Y = np.array([2, 3, 1])


def hinton_reference(z_s, z_t, t: float, with_t_squared: bool = True) -> float:
    total = sum(np_kl(np_softmax(z_t[i] / t), np_softmax(z_s[i] / t)) for i in range(len(z_s)))
    return total / len(z_s) * (t * t if with_t_squared else 1.0)


def test_hinton_kd_is_scaled_by_t_squared():
    for t in (1.0, 2.0, 4.0):
        loss = make("hinton_kd", temperature=t)(logits_inputs(Z_S, Z_T, Y))
        assert loss.item() / hinton_reference(Z_S, Z_T, t, with_t_squared=False) == pytest.approx(t * t)


def test_hinton_kd_averages_over_the_batch_not_the_classes():
    one = make("hinton_kd", temperature=1.0)(logits_inputs(Z_S[:1], Z_T[:1], Y[:1]))
    repeated = make("hinton_kd", temperature=1.0)(
        logits_inputs(np.repeat(Z_S[:1], 3, 0), np.repeat(Z_T[:1], 3, 0), Y[:1].repeat(3))
    )
    summed_over_classes = np_kl(np_softmax(Z_T[0]), np_softmax(Z_S[0]))
    assert one.item() == pytest.approx(summed_over_classes, rel=1e-10)
    assert repeated.item() == pytest.approx(one.item(), rel=1e-10)


def test_hinton_kd_is_kl_of_teacher_to_student():
    forward_kl = hinton_reference(Z_S, Z_T, 1.0)
    reverse_kl = hinton_reference(Z_T, Z_S, 1.0)
    assert abs(forward_kl - reverse_kl) > 1e-3  # the two orders differ on these logits
    loss = make("hinton_kd", temperature=1.0)(logits_inputs(Z_S, Z_T, Y))
    assert loss.item() == pytest.approx(forward_kl, rel=1e-10)


# ---------------------------------------------------------------- dkd


def test_dkd_nckd_ignores_the_target_logit():
    nckd = make("dkd", alpha=0.0, beta=1.0, temperature=2.0)
    shifted = Z_S.copy()
    shifted[np.arange(3), Y] += 3.0
    before = nckd(logits_inputs(Z_S, Z_T, Y))
    after = nckd(logits_inputs(shifted, Z_T, Y))
    assert after.item() == pytest.approx(before.item(), rel=1e-9)


def test_dkd_tckd_sees_only_the_target_probability():
    tckd = make("dkd", alpha=1.0, beta=0.0, temperature=2.0)
    permuted = Z_S.copy()
    for i, g in enumerate(Y):  # shuffle the non-target logits, which keeps p(target) unchanged
        others = [j for j in range(4) if j != g]
        permuted[i, others] = permuted[i, others[::-1]]
    before = tckd(logits_inputs(Z_S, Z_T, Y))
    after = tckd(logits_inputs(permuted, Z_T, Y))
    assert after.item() == pytest.approx(before.item(), rel=1e-9)


def test_dkd_stays_finite_with_confident_logits():
    confident = np.zeros((3, 4))
    confident[np.arange(3), Y] = 200.0
    inputs = logits_inputs(confident, confident * 0.5, Y)
    loss = make("dkd", temperature=1.0)(inputs)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(inputs.student_logits.grad).all()


# ---------------------------------------------------------------- dist


def test_dist_is_zero_when_the_student_matches_the_teacher():
    loss = make("dist", temperature=4.0)(logits_inputs(Z_T, Z_T, Y))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- fitnets


def fitnets_plugin(c_s: int, c_t: int) -> torch.nn.Module:
    return make("fitnets", ModelInfo((c_s,), 5), ModelInfo((c_t,), 5), beta=1.0)


def fitnets_reference(plugin, s_map: np.ndarray, t_map: np.ndarray) -> float:
    size = (min(s_map.shape[2], t_map.shape[2]), min(s_map.shape[3], t_map.shape[3]))
    s, t = np_pool(s_map, size), np_pool(t_map, size)
    w = plugin.adapter.weight.detach().numpy()[:, :, 0, 0]
    b = plugin.adapter.bias.detach().numpy()
    total, count = 0.0, 0
    for n in range(s.shape[0]):
        for o in range(t.shape[1]):
            for i in range(size[0]):
                for j in range(size[1]):
                    mapped = sum(w[o, c] * s[n, c, i, j] for c in range(s.shape[1])) + b[o]
                    total += (mapped - t[n, o, i, j]) ** 2
                    count += 1
    return total / count


def test_fitnets_matches_the_formula_with_a_larger_student_map():
    plugin = fitnets_plugin(3, 5)
    s_map, t_map = randn(2, 3, 4, 4, seed=1), randn(2, 5, 2, 2, seed=2)
    inputs = feature_inputs([s_map], [t_map])
    assert plugin(inputs).item() == pytest.approx(fitnets_reference(plugin, s_map, t_map), rel=1e-9)


def test_fitnets_matches_the_formula_with_a_larger_teacher_map():
    plugin = fitnets_plugin(6, 2)
    s_map, t_map = randn(2, 6, 2, 2, seed=3), randn(2, 2, 4, 4, seed=4)
    inputs = feature_inputs([s_map], [t_map])
    assert plugin(inputs).item() == pytest.approx(fitnets_reference(plugin, s_map, t_map), rel=1e-9)


def test_fitnets_adapter_maps_student_to_teacher_channels():
    plugin = fitnets_plugin(3, 7)
    adapter = plugin.adapter
    assert (adapter.in_channels, adapter.out_channels, adapter.kernel_size) == (3, 7, (1, 1))


def test_fitnets_needs_model_info_for_its_adapter():
    with pytest.raises(ValueError, match="ModelInfo"):
        METHODS.get("fitnets")()


# ---------------------------------------------------------------- attention_transfer


def np_attention(x: np.ndarray) -> np.ndarray:
    energy = np.zeros((x.shape[0], x.shape[2] * x.shape[3]))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            energy[n] += np.abs(x[n, c]).flatten() ** 2
    return energy / np.sqrt((energy**2).sum(axis=1, keepdims=True))


def test_attention_transfer_resizes_the_student_map_to_the_teacher():
    # A spatially constant student map stays constant when resized: its attention is 1/√(H·W) everywhere.
    constant = np.ones((2, 3, 2, 2))
    t_maps = [randn(2, 4, 4, 4, seed=i) for i in range(3)]
    expected = sum(np.mean((np.full((2, 16), 1 / 4) - np_attention(t)) ** 2) for t in t_maps)
    loss = make("attention_transfer", beta=1.0)(feature_inputs([constant] * 3, t_maps))
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_attention_transfer_is_zero_for_the_same_maps_at_any_scale():
    maps = [randn(2, 4, 4, 4, seed=i) for i in range(3)]
    loss = make("attention_transfer")(feature_inputs([3.0 * m for m in maps], maps))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- nst


def np_mmd2(s: np.ndarray, t: np.ndarray) -> float:
    """Polynomial-kernel (d=2, c=0) MMD² between the L2-normalised channels, averaged over the batch."""

    def unit_channels(x, n):
        return [x[n, c].flatten() / np.linalg.norm(x[n, c]) for c in range(x.shape[1])]

    total = 0.0
    for n in range(s.shape[0]):
        a, b = unit_channels(s, n), unit_channels(t, n)
        k_ss = np.mean([(x @ y) ** 2 for x in a for y in a])
        k_tt = np.mean([(x @ y) ** 2 for x in b for y in b])
        k_st = np.mean([(x @ y) ** 2 for x in a for y in b])
        total += k_ss + k_tt - 2 * k_st
    return total / s.shape[0]


def test_nst_pools_the_larger_map_to_the_smaller():
    s_map, t_map = randn(2, 3, 4, 4, seed=1), randn(2, 5, 2, 2, seed=2)
    plugin = make("nst", ModelInfo((3,), 5), ModelInfo((5,), 5), beta=1.0)
    loss = plugin(feature_inputs([s_map], [t_map]))
    assert loss.item() == pytest.approx(np_mmd2(np_pool(s_map, (2, 2)), t_map), rel=1e-9)


def test_nst_is_zero_when_the_student_has_the_teachers_channels_in_another_order():
    t_map = randn(2, 5, 3, 3, seed=1)
    s_map = 2.0 * t_map[:, ::-1].copy()  # MMD compares channel distributions: order and scale do not matter
    plugin = make("nst", ModelInfo((5,), 5), ModelInfo((5,), 5))
    assert plugin(feature_inputs([s_map], [t_map])).item() == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------- rkd


def rkd_inputs(s_emb: np.ndarray, t_emb: np.ndarray) -> DistillInputs:
    # Embeddings as (N, C, 1, 1) maps: the plugin's global pooling leaves them unchanged.
    return feature_inputs([s_emb[:, :, None, None]], [t_emb[:, :, None, None]])


def test_rkd_is_invariant_to_the_scale_of_the_student_embedding():
    s, t = randn(5, 3, seed=7), randn(5, 7, seed=8)
    plugin = make("rkd")
    assert plugin(rkd_inputs(10 * s, t)).item() == pytest.approx(plugin(rkd_inputs(s, t)).item(), rel=1e-9)


def test_rkd_uses_globally_pooled_last_stage_features():
    s_map, t_map = randn(4, 3, 2, 2, seed=1), randn(4, 6, 4, 4, seed=2)
    plugin = make("rkd")
    pooled = plugin(rkd_inputs(s_map.mean(axis=(2, 3)), t_map.mean(axis=(2, 3))))
    assert plugin(feature_inputs([s_map], [t_map])).item() == pytest.approx(pooled.item(), rel=1e-9)


# ---------------------------------------------------------------- pkt


def test_pkt_is_zero_for_the_same_directions():
    t = randn(5, 4, seed=3)
    loss = make("pkt")(rkd_inputs(3.0 * t, t))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- self_distillation_exits


def exits_plugin(channels=(3, 4, 6), classes=5, **hp):
    torch.manual_seed(0)
    return make("self_distillation_exits", ModelInfo(channels, classes), None, **hp)


def test_self_distillation_exits_sit_on_the_three_stages_before_the_last():
    assert METHODS.get("self_distillation_exits").needs_features == (-4, -3, -2)
    plugin = exits_plugin()
    assert [head[-1].in_features for head in plugin.exits] == [3, 4, 6]
    assert all(head[-1].out_features == 5 for head in plugin.exits)


def test_self_distillation_exits_treat_the_final_output_as_a_fixed_target():
    plugin = exits_plugin()
    inputs = feature_inputs([randn(3, c, 4, 4, seed=c) for c in (3, 4, 6)], [])
    plugin(inputs).backward()
    assert inputs.student_logits.grad is None
    assert all(f.grad is not None for f in inputs.student_features)


def test_self_distillation_exits_need_no_teacher():
    cls = METHODS.get("self_distillation_exits")
    assert (cls.needs_teacher_logits, cls.needs_teacher_features) == (False, False)
    plugin = exits_plugin()
    inputs = feature_inputs([randn(3, c, 2, 2, seed=c) for c in (3, 4, 6)], [])
    inputs.teacher_logits = None
    assert torch.isfinite(plugin(inputs))


# ---------------------------------------------------------------- tf_kd


def test_tf_kd_ignores_the_teacher():
    with_teacher = make("tf_kd")(logits_inputs(Z_S, Z_T, Y))
    other_teacher = make("tf_kd")(logits_inputs(Z_S, -Z_T, Y))
    assert with_teacher.item() == other_teacher.item()
