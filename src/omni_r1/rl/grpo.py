"""GRPO math as pure tensor functions (spec.md section 3), in the style of verl's ``core_algos``.

No model, no I/O, no module state: every function takes tensors and returns tensors, and every argument's shape
is documented with these letters:

- ``P`` prompts in a step, ``G`` rollouts per prompt (the group), ``N = P * G`` completions, row ``p * G + g``
  holding rollout ``g`` of prompt ``p`` (what ``rewards.reshape(-1)`` gives);
- ``L`` completion tokens (the generated part only, prompt excluded), ``V`` vocabulary size.

The pieces of one GRPO step, in order:

1. ``group_advantages`` turns the ``(P, G)`` rewards into advantages relative to each group;
   ``informative_groups`` flags the groups whose rewards all agree (zero advantage, no signal) for dropping.
2. ``completion_mask`` keeps the tokens up to and including each completion's first EOS.
3. ``token_logprobs`` gathers the policy's (and the frozen reference's) log-probabilities of the sampled tokens.
4. ``policy_loss`` is the clipped surrogate with separate low and high clip ranges (DAPO's "clip-higher") plus
   ``beta`` times the k3 KL estimate (``kl_k3``) against the reference, reduced by ``masked_mean``.

With one policy update per batch (the paper's setting) ``old_logp`` equals ``logp`` in value, the ratio is 1, no
clipping happens, and the loss is the paper's ``-(A - beta * KL)`` averaged over completion tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

LossNorm = Literal["token", "sequence"]
_NORMS: tuple[str, ...] = ("token", "sequence")

ADVANTAGE_EPS = 1e-4  # added to the group std, as in the official code and TRL


# ------------------------------------------------------------------------------------------- validation


def _require_2d(t: Tensor, name: str, dims: str) -> None:
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape {dims}, got {tuple(t.shape)}")


def _require_same_shape(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same (N, L) shape")


def _require_norm(norm: str) -> None:
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS} (train.loss_norm in params.yaml), got {norm!r}")


# ------------------------------------------------------------------------------------------- advantages


def group_advantages(rewards: Tensor, *, scale_std: bool = True, eps: float = ADVANTAGE_EPS) -> Tensor:
    """Advantages of each rollout relative to its group.

    Args:
        rewards: ``(P, G)`` float, the total reward of rollout ``g`` of prompt ``p``; ``G >= 2``.
        scale_std: divide by the group's standard deviation (the paper, ``train.scale_std``); False gives the
            mean-centred reward only (Dr. GRPO), which does not up-weight groups whose rewards barely differ.
        eps: added to the std so that a group with (nearly) equal rewards gets (nearly) zero advantages rather
            than a division by zero.

    Returns:
        ``(P, G)`` advantages ``(r - mean_G r) / (std_G r + eps)``, or ``r - mean_G r`` without std scaling. The
        std is the unbiased sample std (``torch.std``'s default, divisor ``G - 1``), as in TRL's GRPO trainer and
        the official code; for rewards ``[1, 0, 0, 1]`` it is 0.5774, not 0.5. Integer rewards become float32;
        float rewards keep their dtype. The result carries no gradient.
    """
    _require_2d(rewards, "rewards", "(P, G)")
    if rewards.shape[1] < 2:
        raise ValueError(f"rewards {tuple(rewards.shape)} need a group size G >= 2 (train.group_size): "
                         "advantages are relative to the group")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    r = rewards.detach()
    r = r if r.is_floating_point() else r.float()
    if not torch.isfinite(r).all():
        # A NaN reward would turn its whole group's advantages into NaN; a reward function must fail loudly instead.
        raise ValueError("rewards contain NaN or inf; fix the reward function that produced them")
    centred = r - r.mean(dim=1, keepdim=True)
    if not scale_std:
        return centred
    return centred / (r.std(dim=1, keepdim=True, unbiased=True) + eps)


def informative_groups(rewards: Tensor, *, atol: float = 1e-6) -> Tensor:
    """Which groups carry a learning signal.

    Args:
        rewards: ``(P, G)`` rewards.
        atol: rewards closer than this count as equal.

    Returns:
        ``(P,)`` bool, False for a group whose rewards are all equal (within ``atol``): its advantages are all zero,
        so its rollouts would only add KL and dilute the token average (``train.drop_equal_groups``).
    """
    _require_2d(rewards, "rewards", "(P, G)")
    if rewards.shape[1] < 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} have an empty group")
    r = rewards.detach()
    spread = r.amax(dim=1) - r.amin(dim=1)
    return spread > atol


# ------------------------------------------------------------------------------------------------ masks


def completion_mask(completion_ids: Tensor, *, eos_id: int, pad_id: int | None = None) -> Tensor:
    """Which completion tokens count in the loss.

    Args:
        completion_ids: ``(N, L)`` long, the generated tokens (prompt excluded), right-padded.
        eos_id: the end-of-sequence token; the first one ends the completion.
        pad_id: the padding token. Positions holding it are masked out too, unless it equals ``eos_id`` (then only
            the position after the first EOS tells padding from the real end, which the EOS rule already covers).

    Returns:
        ``(N, L)`` float32: 1 for tokens up to and including the first EOS, 0 after it; 1 everywhere (but pads) for
        a completion with no EOS (cut at the length limit).
    """
    _require_2d(completion_ids, "completion_ids", "(N, L)")
    if completion_ids.is_floating_point():
        raise ValueError(f"completion_ids must hold integer token ids, got dtype {completion_ids.dtype}")
    is_eos = (completion_ids == eos_id).long()
    # A position is kept when no EOS comes strictly before it: the first EOS itself stays in.
    eos_before = is_eos.cumsum(dim=1) - is_eos
    keep = eos_before == 0
    if pad_id is not None and pad_id != eos_id:
        keep &= completion_ids != pad_id
    return keep.float()


# ------------------------------------------------------------------------------------------ log-probs, KL


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each given token under the logits, in float32.

    Args:
        logits: ``(N, L, V)`` float (bf16 is fine), the logits that predict ``tokens`` (already shifted by one: row
            ``l`` of the logits is the distribution of ``tokens[:, l]``).
        tokens: ``(N, L)`` long, ids in ``[0, V)``; replace ignore ids such as -100 by any valid id first, and let
            the mask drop those positions.

    Returns:
        ``(N, L)`` float32 ``log_softmax(logits)[n, l, tokens[n, l]]``, differentiable with respect to the logits.

    Memory: computed as ``logit[token] - logsumexp(logits)`` one sequence at a time, so the float32 temporaries
    hold one ``(L, V)`` slice rather than the whole ``(N, L, V)`` batch (TRL's ``selective_log_softmax`` does the
    same); the vocabulary of Qwen2.5-Omni is 152k entries.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (N, L, V), got {tuple(logits.shape)}")
    _require_2d(tokens, "tokens", "(N, L)")
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} must agree on (N, L)")
    if tokens.is_floating_point():
        raise ValueError(f"tokens must hold integer ids, got dtype {tokens.dtype}")
    vocab = logits.shape[2]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        # On CUDA an out-of-range gather is a device-side assert that kills the process without a useful message.
        raise ValueError(f"tokens hold ids outside [0, {vocab}): min {int(tokens.min())}, max {int(tokens.max())}; "
                         "replace ignore ids (e.g. -100) by a valid id and mask those positions")
    rows = []
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        row = row_logits.float()
        picked = row.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    if not rows:
        return logits.new_zeros(tokens.shape, dtype=torch.float32)
    return torch.stack(rows)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(policy || reference) (Schulman's "approximating KL divergence").

    Args:
        logp: ``(N, L)`` log-probabilities of the sampled tokens under the policy.
        ref_logp: ``(N, L)`` log-probabilities of the same tokens under the frozen reference.

    Returns:
        ``(N, L)`` ``exp(ref - logp) - (ref - logp) - 1``: 0 where the two agree, positive elsewhere (``e^x >= 1 + x``),
        unbiased for the KL when the tokens are sampled from the policy. Not clamped (verl's ``low_var_kl`` clamps
        to [-10, 10]; the official code and TRL do not).
    """
    _require_same_shape(logp, "logp", ref_logp, "ref_logp")
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


# ----------------------------------------------------------------------------------------------- reduce


def masked_mean(values: Tensor, mask: Tensor, *, norm: LossNorm) -> Tensor:
    """Mean of ``values`` over the masked tokens.

    Args:
        values: ``(N, L)`` per-token values.
        mask: ``(N, L)`` 0/1 (bool or float) token mask, e.g. from ``completion_mask``.
        norm: ``"token"``: ``sum(values * mask) / sum(mask)`` over the whole batch, so every token weighs the same
            and long completions weigh more (DAPO, Dr. GRPO). ``"sequence"``: the masked mean of each sequence, then
            the mean over sequences, so every completion weighs the same (the official code and the original GRPO);
            a sequence with an empty mask contributes nothing and is not counted.

    Returns:
        Scalar tensor, differentiable with respect to ``values``.

    Raises:
        ValueError: on shape mismatch, an unknown ``norm``, or a mask that selects no token at all (there is then
            nothing to average; the caller should skip the update, e.g. when no group was informative).
    """
    _require_2d(values, "values", "(N, L)")
    _require_same_shape(values, "values", mask, "mask")
    _require_norm(norm)
    m = mask.to(values.dtype)
    if not bool((m != 0).any()):
        raise ValueError(f"mask {tuple(mask.shape)} selects no token; skip the update when no completion "
                         "(or no informative group) is left")
    if norm == "token":
        return (values * m).sum() / m.sum()
    per_seq_tokens = m.sum(dim=1)
    counted = per_seq_tokens > 0
    # clamp only guards the empty rows, whose numerator is 0 and which are excluded from the count below.
    per_seq = (values * m).sum(dim=1) / per_seq_tokens.clamp(min=1)
    return per_seq[counted].sum() / counted.sum()


# ---------------------------------------------------------------------------------------------- loss


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    beta: float,
    ref_logp: Tensor | None,
    norm: LossNorm = "token",
) -> tuple[Tensor, dict[str, float]]:
    """GRPO loss: clipped surrogate with clip-higher, plus ``beta`` times the k3 KL to the reference.

    Args:
        logp: ``(N, L)`` float32 log-probabilities of the sampled tokens under the policy being trained (with grad).
        old_logp: ``(N, L)`` the same under the policy that sampled them (no grad; detached here anyway). With one
            update per batch (``train.updates_per_batch: 1``) pass ``logp.detach()``.
        advantages: ``(N,)`` one advantage per completion (``group_advantages(...).reshape(-1)``), shared by its
            tokens; detached here.
        mask: ``(N, L)`` 0/1 token mask (``completion_mask``); masked tokens affect neither the loss nor its grad.
        clip_low: the ratio is clipped below at ``1 - clip_low`` (``train.clip_low``), ``0 <= clip_low < 1``.
        clip_high: the ratio is clipped above at ``1 + clip_high`` (``train.clip_high``), ``clip_high >= 0``; a
            larger upper range than lower (DAPO's "clip-higher") lets unlikely tokens with positive advantage grow.
        beta: KL coefficient (``train.beta``), ``>= 0``.
        ref_logp: ``(N, L)`` reference log-probabilities (no grad; detached here), or None, allowed only when
            ``beta == 0``. With ``beta == 0`` a given ``ref_logp`` is only reported in the stats, never in the loss.
        norm: how ``masked_mean`` reduces the per-token loss (``train.loss_norm``).

    Returns:
        ``(loss, stats)``: the scalar loss, and python floats computed without grad:

        - ``loss``: its value;
        - ``kl``: masked token mean of ``kl_k3(logp, ref_logp)``; 0.0 when there is no reference;
        - ``clip_fraction``: masked fraction of tokens where the clipped term was the one chosen by the min (the
          ratio was out of range in the direction that matters for the advantage's sign; those tokens get no grad);
        - ``ratio_mean``, ``ratio_max``: masked token mean and max of the ratio ``exp(logp - old_logp)``.

    Per token: ``-min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) + beta * kl_k3(logp, ref_logp)``.
    At ratio 1 this is ``-A + beta * KL`` in value and its gradient wrt ``logp`` is ``-A`` plus the KL term's, the
    REINFORCE gradient.
    """
    _require_2d(logp, "logp", "(N, L)")
    _require_same_shape(logp, "logp", old_logp, "old_logp")
    _require_same_shape(logp, "logp", mask, "mask")
    if advantages.shape != (logp.shape[0],):
        raise ValueError(f"advantages {tuple(advantages.shape)} must have shape (N,) = ({logp.shape[0]},), "
                         f"one per row of logp {tuple(logp.shape)}; reshape the (P, G) advantages with .reshape(-1)")
    if not 0 <= clip_low < 1 or clip_high < 0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0 (train.clip_low/clip_high), "
                         f"got clip_low={clip_low}, clip_high={clip_high}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (train.beta), got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logp (the reference model's token log-probabilities); "
                         "pass ref_logp, or set train.beta: 0 to train without a reference model")
    if ref_logp is not None:
        _require_same_shape(logp, "logp", ref_logp, "ref_logp")
    _require_norm(norm)

    adv = advantages.detach().to(logp.dtype).unsqueeze(1)
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = kl_k3(logp, ref_logp.detach()) if ref_logp is not None else None
    if beta > 0 and kl is not None:
        per_token = per_token + beta * kl
    loss = masked_mean(per_token, mask, norm=norm)

    with torch.no_grad():
        m = mask.to(torch.bool)
        stats = {
            "loss": float(loss),
            "kl": float(masked_mean(kl, mask, norm="token")) if kl is not None else 0.0,
            "clip_fraction": float(masked_mean((clipped < unclipped).to(logp.dtype), mask, norm="token")),
            "ratio_mean": float(masked_mean(ratio, mask, norm="token")),
            "ratio_max": float(ratio[m].max()),
        }
    return loss, stats
