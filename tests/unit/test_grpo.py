"""Unit tests of omni_r1.rl.grpo on hand-computed tensors: no model, CPU only, fast."""

from __future__ import annotations

import math

import pytest
import torch

from omni_r1.rl.grpo import (
    completion_mask,
    group_advantages,
    informative_groups,
    kl_k3,
    masked_mean,
    policy_loss,
    token_logprobs,
)

EOS, PAD = 2, 0


def close(actual: torch.Tensor, expected: list | torch.Tensor, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------ advantages


def test_advantages_scaled_by_unbiased_std() -> None:
    # mean 0.5; unbiased std = sqrt((4 * 0.25) / 3) = 0.57735; (1 - 0.5) / (0.57735 + 1e-4) = 0.86588
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    adv = group_advantages(rewards)
    std0 = math.sqrt(1 / 3)
    a0 = 0.5 / (std0 + 1e-4)
    # second group: mean 2, deviations [1, -1, 0, 0], std = sqrt(2 / 3)
    a1 = 1 / (math.sqrt(2 / 3) + 1e-4)
    close(adv, [[a0, -a0, -a0, a0], [a1, -a1, 0.0, 0.0]])
    assert adv[0, 0].item() == pytest.approx(0.86588, abs=1e-5)


def test_advantages_without_std_are_mean_centred() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    close(group_advantages(rewards, scale_std=False), [[0.5, -0.5, -0.5, 0.5], [1.0, -1.0, 0.0, 0.0]])


def test_zero_variance_group_gives_zeros_and_is_not_informative() -> None:
    rewards = torch.tensor([[0.7, 0.7, 0.7], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    adv = group_advantages(rewards)
    close(adv[0], [0.0, 0.0, 0.0])
    close(adv[2], [0.0, 0.0, 0.0])
    assert informative_groups(rewards).tolist() == [False, True, False]
    # differences within atol count as equal
    assert informative_groups(torch.tensor([[1.0, 1.0 + 1e-8]])).tolist() == [False]


def test_advantages_integer_rewards_and_bad_input() -> None:
    adv = group_advantages(torch.tensor([[1, 0]]), scale_std=False)
    assert adv.dtype == torch.float32
    close(adv, [[0.5, -0.5]])
    with pytest.raises(ValueError, match=r"G >= 2"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"\(P, G\)"):
        group_advantages(torch.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([[1.0, float("nan")]]))


# ---------------------------------------------------------------------------------------------- masks


def test_completion_mask_eos_middle_end_none_and_pads() -> None:
    ids = torch.tensor([
        [5, 6, EOS, 7, 8],  # EOS in the middle: kept through it, nothing after
        [5, 6, 7, 8, EOS],  # EOS at the end
        [5, 6, 7, 8, 9],  # no EOS: cut at the length limit, all kept
        [5, EOS, PAD, PAD, PAD],  # right padding after EOS
        [5, 6, 7, PAD, PAD],  # padding without an EOS
        [EOS, 5, EOS, 6, 7],  # only the first EOS counts
    ])
    mask = completion_mask(ids, eos_id=EOS, pad_id=PAD)
    assert mask.dtype == torch.float32
    close(mask, [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
    ])


def test_completion_mask_pad_equal_to_eos_keeps_the_first_eos() -> None:
    ids = torch.tensor([[5, EOS, EOS, EOS], [5, 6, 7, 8]])
    close(completion_mask(ids, eos_id=EOS, pad_id=EOS), [[1, 1, 0, 0], [1, 1, 1, 1]])
    close(completion_mask(ids, eos_id=EOS), [[1, 1, 0, 0], [1, 1, 1, 1]])


def test_completion_mask_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        completion_mask(torch.tensor([1, 2]), eos_id=EOS)
    with pytest.raises(ValueError, match="integer"):
        completion_mask(torch.zeros(2, 3), eos_id=EOS)


# ------------------------------------------------------------------------------------ log-probs and KL


def test_token_logprobs_match_manual_log_softmax() -> None:
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [[-1.0, 0.5, 4.0], [2.0, 2.0, -3.0]]])
    tokens = torch.tensor([[2, 1], [0, 1]])
    # hand: log(e^3 / (e + e^2 + e^3)) = 3 - log(e + e^2 + e^3); uniform over 3 -> -log 3
    e = math.exp
    expected = [
        [3 - math.log(e(1) + e(2) + e(3)), -math.log(3)],
        [-1 - math.log(e(-1) + e(0.5) + e(4)), 2 - math.log(2 * e(2) + e(-3))],
    ]
    out = token_logprobs(logits, tokens)
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    close(out, expected, atol=1e-6)


def test_token_logprobs_bf16_in_float32_out_with_the_same_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 11).to(torch.bfloat16).requires_grad_()
    tokens = torch.randint(0, 11, (3, 4))
    out = token_logprobs(logits, tokens)
    assert out.dtype == torch.float32
    ref_logits = logits.detach().float().requires_grad_()
    ref = torch.log_softmax(ref_logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    close(out, ref, atol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, atol=1e-2, rtol=0)


def test_token_logprobs_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"must agree on \(N, L\)"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside \[0, 5\).*-100"):
        token_logprobs(torch.zeros(1, 2, 5), torch.tensor([[1, -100]]))
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        token_logprobs(torch.zeros(1, 2, 5), torch.tensor([[1, 5]]))


def test_kl_k3_zero_at_equality_positive_otherwise_hand_value() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    assert kl_k3(logp, logp).abs().max().item() == 0.0
    ref = torch.tensor([[-2.0, -1.0, -0.5]])
    kl = kl_k3(logp, ref)
    # delta = ref - logp = [-1, 1, 0]: e^-1 + 1 - 1 = 0.36788; e^1 - 1 - 1 = 0.71828; 0
    close(kl, [[math.exp(-1), math.e - 2, 0.0]])
    assert (kl[0, :2] > 0).all()
    with pytest.raises(ValueError, match=r"logp \(1, 3\) and ref_logp \(1, 2\)"):
        kl_k3(logp, ref[:, :2])


# ---------------------------------------------------------------------------------------- masked mean


def test_masked_mean_token_vs_sequence_on_ragged_masks() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # token: (1 + 2 + 3 + 10) / 4 = 4.0; sequence: mean(2.0, 10.0) = 6.0, the empty row not counted
    assert masked_mean(values, mask, norm="token").item() == pytest.approx(4.0)
    assert masked_mean(values, mask, norm="sequence").item() == pytest.approx(6.0)
    assert masked_mean(values, mask.bool(), norm="sequence").item() == pytest.approx(6.0)


def test_masked_mean_gradients_are_finite_with_an_empty_row() -> None:
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    masked_mean(values, mask, norm="sequence").backward()
    close(values.grad, [[0.5, 0.5], [0.0, 0.0]])


def test_masked_mean_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"values \(2, 3\) and mask \(2, 4\)"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 4), norm="token")
    with pytest.raises(ValueError, match="selects no token"):
        masked_mean(torch.zeros(2, 3), torch.zeros(2, 3), norm="token")
    with pytest.raises(ValueError, match="train.loss_norm"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 3), norm="batch")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ policy loss


def test_ratio_one_loss_value_and_reinforce_gradient_token_norm() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -2.2]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, -0.1], [-0.3, -1.0, -9.0]])
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    beta = 0.04
    loss, stats = policy_loss(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.28, beta=beta, ref_logp=ref)

    d = ref - logp.detach()
    kl = torch.exp(d) - d - 1
    per_token = -adv[:, None] + beta * kl
    expected = (per_token * mask).sum() / mask.sum()  # 5 tokens
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    # -(A) averaged over tokens: (3 * -2 + 2 * 1) / 5 = -0.8, plus beta * KL mean
    kl_mean = (kl * mask).sum() / 5
    assert loss.item() == pytest.approx(-0.8 + beta * kl_mean.item(), abs=1e-6)

    loss.backward()
    # d/dlogp [-ratio * A] = -A at ratio 1; d/dlogp kl_k3 = 1 - exp(ref - logp)
    expected_grad = (-adv[:, None] + beta * (1 - torch.exp(d))) * mask / mask.sum()
    close(logp.grad, expected_grad)
    assert stats["loss"] == pytest.approx(loss.item())
    assert stats["kl"] == pytest.approx(kl_mean.item(), abs=1e-6)
    assert stats["clip_fraction"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["ratio_max"] == pytest.approx(1.0)


def test_ratio_one_gradient_without_kl_is_minus_advantage_over_token_count() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -2.2]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.28, beta=0.0, ref_logp=None)
    loss.backward()
    close(logp.grad, -adv[:, None] * mask / 5)


def test_ratio_one_sequence_norm_weighs_each_completion_equally() -> None:
    logp = torch.zeros(2, 4, requires_grad=True)
    adv = torch.tensor([1.0, 3.0])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.2, beta=0.0, ref_logp=None,
                          norm="sequence")
    assert loss.item() == pytest.approx(-(1.0 + 3.0) / 2)  # token norm would give -(4 * 1 + 3) / 5 = -1.4
    loss.backward()
    close(logp.grad, [[-1.0 / 4 / 2] * 4, [-3.0 / 2, 0.0, 0.0, 0.0]])


def test_clip_higher_bounds_and_clip_fraction() -> None:
    # tokens: ratio 1.5 A>0 (clipped at 1.28), ratio 0.5 A<0 (clipped at 0.8),
    #         ratio 1.5 A<0 (not clipped: the unclipped term is the smaller), ratio 1.1 A>0 (inside the range)
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5], [1.5], [1.1]])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0])
    mask = torch.ones(4, 1)
    loss, stats = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, beta=0.0, ref_logp=None)
    # per-token -min(r A, clip(r) A): -1.28, 0.8, 1.5, -2.2
    assert loss.item() == pytest.approx((-1.28 + 0.8 + 1.5 - 2.2) / 4, abs=1e-6)
    loss.backward()
    # grad wrt logp of -r A is -r A; clipped tokens get none
    close(logp.grad, [[0.0], [0.0], [1.5 / 4], [-2.2 / 4]], atol=1e-6)
    assert stats["clip_fraction"] == pytest.approx(2 / 4)
    assert stats["ratio_max"] == pytest.approx(1.5)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 0.5 + 1.5 + 1.1) / 4)


def test_clip_fraction_counts_only_masked_tokens() -> None:
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 1.0, 3.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    _, stats = policy_loss(logp, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28, beta=0.0,
                           ref_logp=None)
    assert stats["clip_fraction"] == pytest.approx(1 / 2)
    assert stats["ratio_max"] == pytest.approx(1.5)  # the masked ratio 3.0 is not reported


def test_beta_positive_without_reference_raises_naming_the_fix() -> None:
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"ref_logp.*train\.beta: 0"):
        policy_loss(logp, logp, torch.ones(1), torch.ones(1, 2), clip_low=0.2, clip_high=0.28, beta=0.04,
                    ref_logp=None)


def test_beta_zero_ignores_the_reference_in_the_loss() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-3.0, 0.0]])
    args = dict(clip_low=0.2, clip_high=0.28, beta=0.0)
    with_ref, stats_ref = policy_loss(logp, logp.detach(), torch.tensor([0.5]), torch.ones(1, 2), ref_logp=ref,
                                      **args)
    without, stats = policy_loss(logp, logp.detach(), torch.tensor([0.5]), torch.ones(1, 2), ref_logp=None, **args)
    assert with_ref.item() == without.item() == pytest.approx(-0.5)
    g_ref, = torch.autograd.grad(with_ref, logp)
    g, = torch.autograd.grad(without, logp)
    torch.testing.assert_close(g_ref, g)
    assert stats["kl"] == 0.0
    assert stats_ref["kl"] == pytest.approx((math.exp(-2) + 2 - 1 + math.exp(2) - 2 - 1) / 2)  # reported only


def test_post_eos_tokens_affect_neither_loss_nor_grads() -> None:
    ids = torch.tensor([[5, 6, EOS, 7], [5, EOS, PAD, PAD]])
    mask = completion_mask(ids, eos_id=EOS, pad_id=PAD)
    adv = torch.tensor([1.0, -2.0])
    ref = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    base = torch.tensor([[-0.5, -1.5, -0.2, -0.7], [-0.4, -0.9, -1.1, -3.0]])
    changed = base.clone()
    changed[0, 3], changed[1, 2:] = -50.0, torch.tensor([20.0, -7.0])  # garbage after the EOS

    results = []
    for values in (base, changed):
        logp = values.clone().requires_grad_()
        old = values.clone()
        old[0, 3] = 3.0  # a wild ratio after the EOS must not count as clipped either
        for norm in ("token", "sequence"):
            loss, stats = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, beta=0.04, ref_logp=ref,
                                      norm=norm)
            grad, = torch.autograd.grad(loss, logp)
            assert grad[mask == 0].abs().max().item() == 0.0
            results.append((loss.item(), grad[mask == 1], stats))
    for (loss_a, grad_a, stats_a), (loss_b, grad_b, stats_b) in zip(results[:2], results[2:], strict=True):
        assert loss_a == pytest.approx(loss_b, abs=1e-7)
        torch.testing.assert_close(grad_a, grad_b)
        assert stats_a == pytest.approx(stats_b)


def test_policy_loss_validates_shapes_and_ranges() -> None:
    logp = torch.zeros(2, 3)
    ok = dict(clip_low=0.2, clip_high=0.28, beta=0.0, ref_logp=None)
    with pytest.raises(ValueError, match=r"logp \(2, 3\) and mask \(2, 4\)"):
        policy_loss(logp, logp, torch.ones(2), torch.ones(2, 4), **ok)
    with pytest.raises(ValueError, match=r"logp \(2, 3\) and old_logp \(3, 3\)"):
        policy_loss(logp, torch.zeros(3, 3), torch.ones(2), torch.ones(2, 3), **ok)
    with pytest.raises(ValueError, match=r"advantages \(2, 1\).*\(N,\) = \(2,\)"):
        policy_loss(logp, logp, torch.ones(2, 1), torch.ones(2, 3), **ok)
    with pytest.raises(ValueError, match=r"logp \(2, 3\) and ref_logp \(2, 2\)"):
        policy_loss(logp, logp, torch.ones(2), torch.ones(2, 3), clip_low=0.2, clip_high=0.28, beta=0.1,
                    ref_logp=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="clip_low"):
        policy_loss(logp, logp, torch.ones(2), torch.ones(2, 3), clip_low=1.0, clip_high=0.28, beta=0.0,
                    ref_logp=None)
    with pytest.raises(ValueError, match="train.beta"):
        policy_loss(logp, logp, torch.ones(2), torch.ones(2, 3), clip_low=0.2, clip_high=0.28, beta=-1.0,
                    ref_logp=None)
