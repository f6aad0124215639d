"""Losses on LoRA factors against dense references built in float64 from the same float32 factors.

Tolerances: ΔW loss values 1e-5 relative (the float32 floor of the factored form; the Gram form
tr((UᵀU)(VVᵀ)) misses it by orders of magnitude when prediction ≈ teacher, shown here), gradients 1e-4
relative in norm (5e-4 at prediction ≈ teacher within 1e-3, where float32 bounds any method at about
eps/δ: ours is 1.1e-4 there, the dense float32 gradient 2.7e-5, and the test asserts within 10x of it),
ΔW helpers 1e-5.
Shapes are small (hidden 24, 2 layers) so that k = r_p + r_t exceeds some modules' smaller side.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llgbm_jax.base.config import ModelConfig
from llgbm_jax.generator.losses import (DeltaLoss, DeltaWLoss, MultiTaskLoss, WeightLoss, delta_w_cosine,
                                        delta_w_relative_error, delta_w_stats, stack_teachers)
from llgbm_jax.lora.adapter import ALL_MODULES, LoRA, LoRAConfig, stack_loras
from llgbm_jax.lora.ops import fold_scaling, mean_lora

CFG = ModelConfig("llama", 100, hidden_size=24, intermediate_size=40, num_layers=2, num_heads=3, num_kv_heads=1,
                  head_dim=8)
L = CFG.num_layers
# q: 24 x 24; k: 8 x 24 (fewer rows than k = r_p + r_t); down: 24 x 40 (the A side is the longer one)
MODS = ("q_proj", "k_proj", "down_proj")


def make_lora(seed, rank=8, alpha=16.0, batch=(), modules=MODS, b_scale=0.05, **kw) -> LoRA:
    """Random float32 factors (rank padding random too: its zero scaling must hide it)."""
    rng = np.random.default_rng(seed)
    cfg = LoRAConfig(rank, alpha, tuple(modules), **kw)
    A, B = {}, {}
    for m in cfg.target_modules:
        out, inp = CFG.module_shapes[m]
        A[m] = jnp.asarray(rng.uniform(-1, 1, batch + (L, cfg.max_rank, inp)).astype(np.float32) / np.sqrt(inp))
        B[m] = jnp.asarray(b_scale * rng.standard_normal(batch + (L, out, cfg.max_rank)).astype(np.float32))
    return LoRA(A, B, cfg)


def perturb(lora: LoRA, rel: float, seed: int) -> LoRA:
    """Every factor plus Gaussian noise of ``rel`` times that factor's standard deviation."""
    rng = np.random.default_rng(seed)
    noisy = lambda x: x + rel * float(jnp.std(x)) * rng.standard_normal(x.shape).astype(np.float32)
    return jax.tree_util.tree_map(lambda x: jnp.asarray(noisy(np.asarray(x))), lora)


def dense(lora: LoRA) -> dict[str, torch.Tensor]:
    """float64 ΔW ``[..., L, out, in]`` per module."""
    return {m: torch.einsum("...lor,lr,...lri->...loi", torch.tensor(np.asarray(lora.B[m]), dtype=torch.float64),
                            torch.tensor(lora.scales(m)), torch.tensor(np.asarray(lora.A[m]), dtype=torch.float64))
            for m in lora.modules}


def dense_value_and_grad(pred: LoRA, teacher: LoRA, normalize=None):
    """The loss from dense float64 ΔW, and its gradient w.r.t. pred's A and B (torch autograd)."""
    A = {m: torch.tensor(np.asarray(pred.A[m]), dtype=torch.float64, requires_grad=True) for m in pred.modules}
    B = {m: torch.tensor(np.asarray(pred.B[m]), dtype=torch.float64, requires_grad=True) for m in pred.modules}
    dp = {m: torch.einsum("...lor,lr,...lri->...loi", B[m], torch.tensor(pred.scales(m)), A[m]) for m in pred.modules}
    dt = dense(teacher)
    modules = [m for m in ALL_MODULES if m in dp or m in dt]
    diff = {m: dp.get(m, 0) - dt.get(m, 0) for m in modules}
    batch = np.broadcast_shapes(pred.batch_shape, teacher.batch_shape)
    diff = {m: torch.broadcast_to(d, batch + d.shape[-3:]) for m, d in diff.items()}
    if normalize is None:
        loss = sum((d ** 2).sum() for d in diff.values()) / sum(d.numel() for d in diff.values())
    else:
        nt = torch.stack([(dt[m] ** 2).sum((-3, -2, -1)).broadcast_to(batch) for m in modules])
        err = torch.stack([(diff[m] ** 2).sum((-3, -2, -1)) for m in modules])
        if normalize == "batch":
            loss = (err.flatten(1).sum(1) / nt.flatten(1).sum(1)).mean()
        else:
            loss = (err / (nt + 1e-6 * nt.flatten(1).mean(1).reshape((-1,) + (1,) * len(batch)))).mean()
    loss.backward()
    return loss.item(), {"A": {m: A[m].grad.numpy() for m in A}, "B": {m: B[m].grad.numpy() for m in B}}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def grad_rel(grad: LoRA, ref: dict) -> float:
    ours = np.concatenate([np.ravel(getattr(grad, f)[m]) for f in "AB" for m in grad.modules])
    theirs = np.concatenate([np.ravel(ref[f][m]) for f in "AB" for m in grad.modules])
    return rel(ours, theirs)


VG = {n: jax.jit(jax.value_and_grad(DeltaWLoss(16, 8, normalize=n))) for n in DeltaWLoss.NORMALIZE}  # shared compiles


def check(pred, teacher, normalize=None, value_tol=1e-5, grad_tol=1e-4):
    """Our jitted value and gradient against the dense float64 ones; returns (value rel, gradient rel)."""
    value, grad = VG[normalize](pred, teacher)
    ref, ref_grad = dense_value_and_grad(pred, teacher, normalize)
    errs = abs(float(value) - ref) / abs(ref), grad_rel(grad, ref_grad)
    assert errs[0] <= value_tol and errs[1] <= grad_tol, f"value rel {errs[0]:.1e}, gradient rel {errs[1]:.1e}"
    return errs


# --- ΔW loss ---------------------------------------------------------------------------------------------------

def test_scaling_attribute_and_bad_settings():
    assert DeltaWLoss(16, 8).scaling == 2.0
    with pytest.raises(ValueError, match="normalize='layer'"):
        DeltaWLoss(16, 8, normalize="layer")


def test_random_factors_match_dense():
    """(a) equal ranks, batch of 3 adapters, all seven projections."""
    check(make_lora(0, batch=(3,), modules=ALL_MODULES), make_lora(1, batch=(3,), modules=ALL_MODULES))


def test_prediction_near_teacher_where_the_gram_form_fails():
    """(b) prediction = teacher + 1e-3 relative noise: ours keeps 1e-5, the float32 Gram form does not."""
    teacher = make_lora(2, batch=(2,))
    pred = perturb(teacher, 1e-3, seed=3)
    value_err, grad_err = check(pred, teacher, grad_tol=5e-4)

    def gram_form(p, t):  # tr((UᵀU)(VVᵀ)) with U = [s_p B_p, −s_t B_t], V = [A_p; A_t], float32
        total = 0.0
        for m in p.modules:
            U = jnp.concatenate([p.B[m] * p.scales(m)[:, None, :], -t.B[m] * t.scales(m)[:, None, :]], -1)
            V = jnp.concatenate([p.A[m], t.A[m]], -2)
            total += jnp.sum((jnp.swapaxes(U, -1, -2) @ U) * (V @ jnp.swapaxes(V, -1, -2)))
        return total / sum(math.prod(p.batch_shape) * L * math.prod(CFG.module_shapes[m]) for m in p.modules)

    ref = dense_value_and_grad(pred, teacher)[0]
    gram_err = abs(float(jax.jit(gram_form)(pred, teacher)) - ref) / ref
    print(f"relative error: ours {value_err:.1e}, Gram form {gram_err:.1e}; gradient ours {grad_err:.1e}")
    assert gram_err > 1e-3 and gram_err > 100 * value_err
    # the gradient's floor is float32 itself: the float32 dense gradient is off by the same order
    count = sum(math.prod(pred.batch_shape) * L * math.prod(CFG.module_shapes[m]) for m in pred.modules)
    dt = {m: jnp.asarray(d.numpy(), jnp.float32) for m, d in dense(teacher).items()}
    g32 = jax.jit(jax.grad(lambda p: sum(jnp.sum(((p.B[m] * p.scales(m)[:, None, :]) @ p.A[m] - dt[m]) ** 2)
                                         for m in p.modules) / count))(pred)
    dense32_err = grad_rel(g32, dense_value_and_grad(pred, teacher)[1])
    print(f"gradient relative error: ours {grad_err:.1e}, dense float32 {dense32_err:.1e}")
    assert dense32_err > grad_err / 10


def test_different_ranks_and_modules_on_one_side():
    """(c) rank 8 vs 4; k = 12 exceeds k_proj's 8 rows; v_proj only in pred, down_proj only in teacher."""
    check(make_lora(6, rank=8, batch=(2,)), make_lora(7, rank=4, alpha=4, batch=(2,)))
    pred = make_lora(4, rank=8, alpha=16, batch=(2,), modules=("q_proj", "k_proj", "v_proj"))
    teacher = make_lora(5, rank=4, alpha=32, batch=(2,), modules=("q_proj", "k_proj", "down_proj"))
    check(pred, teacher)


def test_per_layer_ranks_alphas_and_rslora():
    """(d) rank_pattern / alpha_pattern on the prediction, rsLoRA on the teacher; padding is random here."""
    pred = make_lora(8, rank=4, alpha=8, batch=(2,), layer_ranks={"q_proj": (2, 6), "down_proj": (4, 1)},
                     layer_alphas={"k_proj": (3.0, 12.0)})
    teacher = make_lora(9, rank=6, alpha=8, batch=(2,), use_rslora=True)
    check(pred, teacher)


def test_batched_teachers_of_different_ranks_and_broadcast():
    """(e) stack_teachers folds each teacher's scaling and pads its rank; a single teacher broadcasts."""
    teachers = [make_lora(10, rank=4, alpha=8), make_lora(11, rank=8, alpha=32, use_rslora=True),
                make_lora(12, rank=2, alpha=2, layer_ranks={"k_proj": (1, 2)})]
    batch = stack_teachers(teachers)
    assert batch.batch_shape == (3,) and batch.config.max_rank == 8 and batch.config.scaling == 1.0
    for i, t in enumerate(teachers):  # same ΔW, exactly
        for m, d in dense(t).items():
            np.testing.assert_allclose(dense(batch)[m][i].numpy(), d.numpy(), rtol=1e-5,
                                       atol=1e-6 * d.abs().max().item())
    check(make_lora(13, rank=8, batch=(3,)), batch)
    check(make_lora(14, rank=8, batch=(3,)), teachers[1])  # teacher batch () broadcast over 3 predictions
    assert stack_teachers(teachers, rank=16).config.max_rank == 16
    with pytest.raises(ValueError, match="below the adapter's rank"):
        stack_teachers(teachers, rank=4)
    with pytest.raises(ValueError, match="different modules"):
        stack_teachers([teachers[0], make_lora(15, modules=["q_proj"])])


def test_gradient_at_zero_b_is_finite_and_exact():
    """B_p = 0 (the generator's initialisation): U is rank deficient; loss and gradient are still exact."""
    pred = make_lora(16, batch=(2,), b_scale=0.0)
    teacher = make_lora(17, batch=(2,))
    _, grad = VG[None](pred, teacher)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(grad))
    assert all(float(jnp.abs(grad.B[m]).max()) > 0 for m in grad.modules)  # B moves; A's gradient is 0 here
    check(pred, teacher)
    check(teacher, jax.tree_util.tree_map(jnp.zeros_like, teacher))  # zero teacher: rank-deficient the other way
    value, grad = VG[None](teacher, teacher)  # identical: D = 0 exactly
    assert abs(float(value)) < 1e-12 and all(float(jnp.abs(x).max()) < 1e-9 for x in jax.tree_util.tree_leaves(grad))


def test_normalized_variants_match_their_dense_definitions():
    pred = make_lora(18, rank=8, batch=(3,), modules=("q_proj", "k_proj"))
    teacher = make_lora(19, rank=4, alpha=8, batch=(3,))
    check(pred, teacher, normalize="module")  # down_proj only in the teacher: relative error 1 there
    check(pred, teacher, normalize="batch")
    # scale invariance per module: scaling one module's ΔW (both sides) leaves the loss unchanged
    big = lambda l: LoRA(l.A, {m: b * (100.0 if m == "q_proj" else 1.0) for m, b in l.B.items()}, l.config)
    for normalize in ("module", "batch"):
        loss = lambda p, t: float(VG[normalize](p, t)[0])
        assert loss(big(pred), big(teacher)) == pytest.approx(loss(pred, teacher), rel=1e-5)
        with pytest.raises(ValueError, match=r"teacher has no \['down_proj'\]"):
            DeltaWLoss(normalize=normalize)(teacher, pred)


def test_normalize_batch_does_not_shrink_towards_small_teachers():
    """One prediction against a teacher T and 0.5·T (two checkpoints of one trajectory, same condition):
    with normalize=None or "batch" the loss is minimal at their plain mean 0.75·T; "module" weights each by
    1/‖ΔW‖² and puts it at (1·1 + 4·0.5) / 5 = 0.6·T."""
    t = make_lora(26, batch=())
    scaled = lambda f: LoRA(t.A, {m: b * f for m, b in t.B.items()}, t.config)
    teachers = stack_teachers([scaled(1.0), scaled(0.5)])
    grad_norm = lambda n, f: np.linalg.norm(np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(
        VG[n](scaled(f), teachers)[1])]))
    for normalize, best, other in ((None, 0.75, 0.6), ("batch", 0.75, 0.6), ("module", 0.6, 0.75)):
        assert grad_norm(normalize, best) < 1e-4 * grad_norm(normalize, other), normalize


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="batch shapes do not broadcast"):
        DeltaWLoss()(make_lora(20, batch=(3,)), make_lora(21, batch=(2,)))
    other = LoRA({"q_proj": jnp.zeros((L + 1, 4, 24))}, {"q_proj": jnp.zeros((L + 1, 24, 4))},
                 LoRAConfig(4, 8, ("q_proj",)))
    with pytest.raises(ValueError, match="layers"):
        DeltaWLoss()(make_lora(22), other)
    odd = LoRA({"q_proj": jnp.zeros((L, 4, 20))}, {"q_proj": jnp.zeros((L, 24, 4))}, LoRAConfig(4, 8, ("q_proj",)))
    with pytest.raises(ValueError, match=r"q_proj.*\(out, in\) differ"):
        DeltaWLoss()(make_lora(23), odd)


# --- evaluation helpers, fold_scaling, mean_lora ----------------------------------------------------------------

def test_stats_cosine_relative_error_match_dense():
    pred = make_lora(24, rank=8, batch=(2,), modules=("q_proj", "k_proj", "down_proj"))
    teacher = make_lora(25, rank=4, alpha=8, batch=(2,), use_rslora=True, modules=("q_proj", "down_proj", "o_proj"))
    stats, cos, relerr = (delta_w_stats(pred, teacher), delta_w_cosine(pred, teacher),
                          delta_w_relative_error(pred, teacher))
    dp, dt = dense(pred), dense(teacher)
    assert set(stats) == {"q_proj", "k_proj", "o_proj", "down_proj"}
    for m in stats:
        p, t = (d[m].flatten(-3) if m in d else torch.zeros(2, L * math.prod(CFG.module_shapes[m])) for d in (dp, dt))
        want = {"sq_err": ((p - t) ** 2).sum(-1), "pred_sq_norm": (p ** 2).sum(-1), "teacher_sq_norm": (t ** 2).sum(-1),
                "inner": (p * t).sum(-1)}
        for k, v in want.items():
            np.testing.assert_allclose(np.asarray(stats[m][k]), v.numpy(), rtol=1e-5, atol=1e-7, err_msg=f"{m} {k}")
        c = torch.nn.functional.cosine_similarity(p, t, dim=-1) if m in dp and m in dt else torch.zeros(2)
        np.testing.assert_allclose(np.asarray(cos[m]), c.numpy(), rtol=1e-5, atol=1e-6, err_msg=m)
        if m in dt:
            np.testing.assert_allclose(np.asarray(relerr[m]), ((p - t).norm(dim=-1) / t.norm(dim=-1)).numpy(),
                                       rtol=1e-5)
    assert np.isinf(np.asarray(relerr["k_proj"])).all()  # no teacher ΔW: relative error undefined


def test_fold_scaling_and_mean_lora_against_dense():
    a = make_lora(26, rank=4, alpha=8, modules=ALL_MODULES, layer_ranks={"q_proj": (2, 4)},
                  layer_alphas={"up_proj": (1.0, 5.0)})
    b = make_lora(27, rank=6, alpha=3, use_rslora=True, modules=[m for m in ALL_MODULES if m != "o_proj"])
    for lora in (a, b):
        folded = fold_scaling(lora, rank=8)
        assert folded.config.max_rank == 8 and folded.config.is_uniform and folded.config.scaling == 1.0
        for m, d in dense(lora).items():
            np.testing.assert_allclose(dense(folded)[m].numpy(), d.numpy(), rtol=1e-5, atol=1e-6 * d.abs().max().item(),
                                       err_msg=m)
    mean = mean_lora([a, b])
    da, db, dm = dense(a), dense(b), dense(mean)
    assert set(dm) == set(ALL_MODULES)
    for m in ALL_MODULES:
        want = (da[m] + db.get(m, torch.zeros_like(da[m]))) / 2
        np.testing.assert_allclose(dm[m].numpy(), want.numpy(), rtol=1e-5, atol=1e-6 * want.abs().max().item(),
                                   err_msg=m)
    # ... and the factored loss agrees: ΔW error of the mean adapter against each input
    assert float(jax.jit(DeltaWLoss().__call__)(mean, a)) == pytest.approx(dense_value_and_grad(mean, a)[0], rel=1e-5)


# --- raw-factor loss, behavioural loss, the combination ----------------------------------------------------------

def test_weight_loss_on_folded_factors():
    pred = make_lora(28, rank=8, alpha=16, batch=(2,))
    teachers = [make_lora(29, rank=4, alpha=8), make_lora(30, rank=8, alpha=4)]
    teacher = stack_teachers(teachers, rank=8)
    fp = fold_scaling(pred)
    want = sum(float(((np.asarray(getattr(fp, f)[m], np.float64)
                       - np.asarray(getattr(teacher, f)[m], np.float64)) ** 2).sum())
               for f in "AB" for m in MODS)
    want /= sum(getattr(fp, f)[m].size for f in "AB" for m in MODS)
    assert float(jax.jit(WeightLoss())(pred, teacher)) == pytest.approx(want, rel=1e-5)
    assert float(WeightLoss()(pred, pred)) == 0.0
    with pytest.raises(ValueError, match=r"A\[q_proj\] shapes differ.*rank=8"):
        WeightLoss()(pred, stack_teachers(teachers[:1]))  # rank 4 against the prediction's 8
    with pytest.raises(ValueError, match="modules"):
        WeightLoss()(pred, make_lora(31, modules=["q_proj"]))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from llgbm_jax.base.model import load_base_model

    from conftest import make_tiny_torch_model

    folder = tmp_path_factory.mktemp("tiny-llama-losses")
    make_tiny_torch_model("llama", seed=5, num_hidden_layers=1).save_pretrained(folder)
    return load_base_model(str(folder))


def test_delta_loss_and_multitask(tiny_llama, monkeypatch):
    from llgbm_jax.conditions import deltas as delta_mod
    from llgbm_jax.conditions.probes import probe_set
    from llgbm_jax.lora.adapter import init_lora

    model = tiny_llama
    rng = np.random.default_rng(0)
    ids = rng.integers(3, model.config.vocab_size, (3, 6)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :2] = 0
    probes = probe_set(["a", "b", "c"], ids, mask)
    cfg = LoRAConfig(4, 8, ("q_proj", "v_proj"))
    pred = stack_loras([init_lora(jax.random.PRNGKey(i), model.config, cfg, random_b=True, b_std=0.1)
                        for i in range(2)])
    teacher = stack_loras([init_lora(jax.random.PRNGKey(10 + i), model.config, cfg, random_b=True, b_std=0.1)
                           for i in range(2)])

    def delta_by_hand(lora):  # mean over probes of the last-token hidden state, adapted − base
        base = np.asarray(model.hidden_states(ids, mask))[:, -1]
        return np.stack([np.asarray(model.hidden_states(ids, mask,
                                                        lora=jax.tree_util.tree_map(lambda x: x[i], lora)))[:, -1]
                         - base for i in range(2)]).mean(1)

    t_delta = delta_by_hand(teacher)
    want = float(((delta_by_hand(pred) - t_delta) ** 2).mean())
    dl = DeltaLoss(model, probes)
    assert want > 1e-8 and float(dl(pred, t_delta)) == pytest.approx(want, rel=1e-3, abs=1e-9)
    assert float(dl(teacher, t_delta)) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="differ in shape"):
        dl(pred, t_delta[0])

    mt = MultiTaskLoss(lambda_weight=0.5, lambda_delta=2.0, weight_loss=DeltaWLoss(8, 4), delta_loss=dl)
    total, terms = mt(pred, teacher, t_delta)
    assert float(terms["loss_weight"]) == pytest.approx(float(DeltaWLoss()(pred, teacher)), rel=1e-6)
    assert float(terms["loss_delta"]) == pytest.approx(float(dl(pred, t_delta)), rel=1e-6)
    assert float(total) == pytest.approx(0.5 * float(terms["loss_weight"]) + 2 * float(terms["loss_delta"]), rel=1e-6)

    def no_forward(*a, **k):
        raise AssertionError("lambda_delta == 0 ran the decoder")

    monkeypatch.setattr(delta_mod, "behavioural_delta", no_forward)
    monkeypatch.setattr(delta_mod, "delta_fn", no_forward)  # the pure form a training step calls
    weight_only = MultiTaskLoss(delta_loss=dl)
    total, terms = jax.jit(lambda p, t, d: weight_only(p, t, d))(pred, teacher, t_delta)
    assert float(total) == float(terms["loss_weight"]) > 0 and float(terms["loss_delta"]) == 0.0
    with pytest.raises(ValueError, match="needs a delta_loss"):
        MultiTaskLoss(lambda_delta=1.0)
    with pytest.raises(ValueError, match="all 0: nothing to train"):
        MultiTaskLoss(lambda_weight=0.0)
    with pytest.raises(ValueError, match="lambda_sft=1.0 needs an sft_loss"):
        MultiTaskLoss(lambda_sft=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        MultiTaskLoss(lambda_weight=-1.0)
    with pytest.raises(ValueError, match="needs the teacher delta"):
        MultiTaskLoss(lambda_delta=1.0, delta_loss=dl)(pred, teacher)
    with pytest.raises(ValueError, match="needs the teacher LoRA"):
        MultiTaskLoss()(pred)
