"""Unit tests of omni_r1.eval.metrics on hand-checkable masks, against the literal per-frame reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.metrics_speed import main as bench_main
from bench.metrics_speed import make_masks, reference_frame_a_r, reference_j_f, reference_seg2bmap
from omni_r1.eval import metrics as M


def square(h: int, w: int, top: int, left: int, size: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


# ------------------------------------------------------------------------------------------------ J


def test_j_perfect_empty_and_both_empty() -> None:
    obj = square(10, 10, 2, 2, 4)
    empty = np.zeros_like(obj)
    pred = np.stack([obj, empty, obj, empty])
    gt = np.stack([obj, obj, empty, empty])
    np.testing.assert_array_equal(M.region_j(pred, gt), [1.0, 0.0, 0.0, 1.0])


def test_j_shift_by_one_and_two_pixels() -> None:
    gt = square(10, 10, 2, 2, 4)  # 16 pixels
    one = np.roll(gt, 1, axis=1)  # 12 shared, union 20
    two = np.roll(gt, 2, axis=1)  # 8 shared, union 24
    assert M.region_j(one, gt)[0] == pytest.approx(12 / 20, abs=0)
    assert M.region_j(two, gt)[0] == pytest.approx(8 / 24, abs=1e-15)


def test_j_any_nonzero_is_foreground_and_2d_input() -> None:
    gt = np.zeros((6, 6), dtype=np.uint8)
    gt[1:3, 1:3] = 1
    gt[2:4, 2:4] += 1  # overlapping objects: value 2 at (2, 2); the union has 7 pixels
    pred = np.where(gt > 0, 255, 0).astype(np.uint8)
    pred[5, 5] = 255
    assert M.region_j(pred, gt).shape == (1,)
    assert M.region_j(pred, gt)[0] == pytest.approx(7 / 8)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same"):
        M.region_j(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="shape"):
        M.boundary_f(np.zeros(4), np.zeros(4))


# ------------------------------------------------------------------------------------------------ F


def test_seg2bmap_border_object_last_row_and_column_rules() -> None:
    m = np.array([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=bool)
    expected = np.array([[0, 1, 1, 1], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(M.seg2bmap(m)[0], expected)
    np.testing.assert_array_equal(reference_seg2bmap(m), expected)


def test_seg2bmap_full_frame_and_bottom_right_pixel_have_no_boundary() -> None:
    assert not M.seg2bmap(np.ones((5, 7), dtype=bool)).any()
    corner = np.zeros((5, 7), dtype=bool)
    corner[-1, -1] = True  # E and S see nothing past the edge, and b[-1, -1] is forced to 0
    b = M.seg2bmap(corner)[0]
    assert b[-1, -1] == 0
    assert {tuple(p) for p in np.argwhere(b)} == {(3, 5), (3, 6), (4, 5)}


def test_seg2bmap_matches_literal_reference_on_random_masks() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        m = rng.random((int(rng.integers(1, 9)), int(rng.integers(1, 9)))) < 0.5
        np.testing.assert_array_equal(M.seg2bmap(m)[0], reference_seg2bmap(m))


def test_tolerance_and_disk() -> None:
    assert M.boundary_tolerance(10, 10) == 1  # 0.008 * 14.1 -> 1
    assert M.boundary_tolerance(100, 100) == 2
    assert M.boundary_tolerance(480, 854) == 8  # ceil(7.84)
    d = M.disk(2)
    assert d.shape == (5, 5) and d.sum() == 13 and not d[0, 0] and d[0, 2] and d[1, 1]


def test_f_perfect_empty_and_edge_cases() -> None:
    obj = square(10, 10, 2, 2, 4)
    empty = np.zeros_like(obj)
    full = np.ones_like(obj)  # a full frame has no seg2bmap boundary
    pred = np.stack([obj, empty, obj, empty, full, full])
    gt = np.stack([obj, obj, empty, empty, full, obj])
    np.testing.assert_array_equal(M.boundary_f(pred, gt), [1.0, 0.0, 0.0, 1.0, 1.0, 0.0])


def test_f_shift_within_and_beyond_tolerance() -> None:
    gt = square(10, 10, 2, 2, 4)  # r = 1 on 10x10; its boundary is the ring rows 1..5 x cols 1..5
    assert M.boundary_f(np.roll(gt, 1, axis=1), gt)[0] == 1.0  # every ring pixel within 1 of the other ring
    # Shift 2: 10 of the 16 ring pixels are within distance 1 of the other ring, both ways -> P = R = F = 10/16.
    assert M.boundary_f(np.roll(gt, 2, axis=1), gt)[0] == pytest.approx(10 / 16)


def test_f_tiny_objects() -> None:
    gt = np.zeros((10, 10), dtype=bool)
    gt[5, 5] = True  # boundary: (4,4) (4,5) (5,4) (5,5)
    near = np.roll(gt, 1, axis=1)
    far = np.roll(gt, 3, axis=1)  # boundaries 2 columns apart at best: nothing within r = 1
    assert M.region_j(near, gt)[0] == 0.0
    assert M.boundary_f(near, gt)[0] == 1.0
    assert M.boundary_f(far, gt)[0] == 0.0  # P + R = 0


def test_count_within_equals_disk_dilation() -> None:
    rng = np.random.default_rng(2)
    for _ in range(40):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        a, b = rng.random(shape) < rng.random(), rng.random(shape) < rng.random() * 0.2
        r = int(rng.integers(0, 6))
        expected = np.count_nonzero((a & M.dilate_disk(b, r)).reshape(shape[0], -1), axis=1)
        np.testing.assert_array_equal(M.count_within(a, b, r), expected)


def test_j_and_f_equal_per_frame_reference_exactly() -> None:
    pred, gt = make_masks(6, 60, 90, seed=3)
    j_ref, f_ref = reference_j_f(pred, gt)
    np.testing.assert_array_equal(M.region_j(pred, gt), j_ref)
    np.testing.assert_array_equal(M.boundary_f(pred, gt), f_ref)
    jf = M.j_and_f(pred, gt)
    assert jf == pytest.approx({"J": j_ref.mean(), "F": f_ref.mean(), "JF": (j_ref.mean() + f_ref.mean()) / 2})


def test_multi_object_union_has_one_outline() -> None:
    a, b = square(20, 20, 2, 2, 6), square(20, 20, 5, 5, 6)
    union_u8 = a.astype(np.uint8) + b.astype(np.uint8)  # 2 where they overlap
    pred = np.where(a | b, 255, 0).astype(np.uint8)
    assert M.region_j(pred, union_u8)[0] == 1.0
    assert M.boundary_f(pred, union_u8)[0] == 1.0
    np.testing.assert_array_equal(M.seg2bmap(union_u8), M.seg2bmap(a | b))


# ------------------------------------------------------------------------------------------ A and R


def test_a_r_official_quirks_by_hand() -> None:
    truth = np.array([[[0, 1, 2], [0, 0, 1]]], dtype=np.uint8)
    pred = np.array([[[255, 255, 255], [0, 0, 0]]], dtype=np.uint8)
    fg = (truth > 0).astype(np.uint8)
    acc, robust = M.revos_a_r_official(truth, pred, fg)
    assert acc == pytest.approx(2 / 6)  # only the two pixels where both are 0 agree
    # neg = 255 (false positive) + (1 - 2 = 255) * 255 mod 256 = 1 -> 256; pos = 3
    assert robust == 0.0
    acc_b, robust_b = M.revos_a_r_binary(truth, pred, fg)
    assert acc_b == pytest.approx(4 / 6)
    assert robust_b == pytest.approx(1 - 1 / (3 + 1e-6))


def test_false_positive_pixel_weighs_255() -> None:
    truth = np.zeros((1, 40, 50), dtype=np.uint8)
    truth[0, :20, :50] = 1  # 1000 foreground pixels
    pred = np.where(truth > 0, 255, 0).astype(np.uint8)
    pred[0, 30, 30] = 255  # one false positive
    acc, robust = M.revos_a_r_official(truth, pred, truth)
    assert robust == pytest.approx(1 - 255 / (1000 + 1e-6), abs=1e-15)
    assert acc == pytest.approx(999 / 2000)  # truth 1 never equals 255: only background agrees
    assert M.revos_a_r_binary(truth, pred, truth)[1] == pytest.approx(1 - 1 / (1000 + 1e-6))


def test_a_r_frames_equal_literal_uint8_reference() -> None:
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 4, size=(5, 12, 9), dtype=np.uint8)  # values up to 3: 1 - 3 wraps to 254
    pred = (rng.integers(0, 2, size=truth.shape) * 255).astype(np.uint8)
    fg = rng.integers(0, 3, size=truth.shape, dtype=np.uint8)
    acc, robust = M.revos_a_r_frames(truth, pred, fg)
    expected = [reference_frame_a_r(t, p, f) for t, p, f in zip(truth, pred, fg)]
    np.testing.assert_array_equal(acc, [e[0] for e in expected])
    np.testing.assert_array_equal(robust, [e[1] for e in expected])


def test_a_r_official_refuses_non_uint8() -> None:
    with pytest.raises(TypeError, match="uint8"):
        M.revos_a_r_official(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), np.uint8), np.zeros((1, 2, 2), np.uint8))


def test_expression_metrics_keys() -> None:
    truth = square(12, 12, 3, 3, 5).astype(np.uint8)[None]
    m = M.revos_expression_metrics(truth, (truth * 255).astype(np.uint8), truth)
    assert m["J"] == 1.0 and m["F"] == 1.0 and m["A_binary"] == 1.0 and m["R_binary"] == 1.0
    assert m["A"] == pytest.approx(1 - 25 / 144) and m["R"] == 1.0


# ---------------------------------------------------------------------------------------------- RefAVS


def test_cv2_resize_identity_upscale_and_downscale_by_hand() -> None:
    img = np.array([[255, 0], [0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(M.cv2_resize_linear_u8(img, 2, 2), img)
    expected = np.array([[255, 191, 64, 0], [191, 143, 48, 0], [64, 48, 16, 0], [0, 0, 0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(M.cv2_resize_linear_u8(img, 4, 4), expected)
    big = np.zeros((4, 4), dtype=np.uint8)
    big[0, 0], big[3, 3] = 255, 1  # exact 2x down is the 2x2 mean, (sum + 2) >> 2: 255 -> 64, a lone 1 -> 0
    np.testing.assert_array_equal(M.cv2_resize_linear_u8(big, 2, 2), [[64, 0], [0, 0]])


def _float_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Half-pixel-centre bilinear with clamped edges, in float (the mathematical cv2 INTER_LINEAR)."""

    def taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
        i0 = np.floor(pos).astype(int)
        return i0, np.minimum(i0 + 1, src - 1), pos - i0

    x0, x1, fx = taps(img.shape[1], width)
    y0, y1, fy = taps(img.shape[0], height)
    rows = img[:, x0] * (1 - fx) + img[:, x1] * fx
    return rows[y0] * (1 - fy)[:, None] + rows[y1] * fy[:, None]


def test_refavs_binarize_is_exact_for_synthetic_sizes() -> None:
    rng = np.random.default_rng(5)
    masks = (rng.random((3, 64, 96)) < 0.02).astype(np.uint8) * 255  # sparse: many pixels with small weights
    got = M.refavs_binarize(masks)
    assert got.shape == (3, 256, 256)
    for frame, out in zip(masks, got):
        np.testing.assert_array_equal(out, _float_bilinear(frame.astype(float), 256, 256) > 0)
    general = M.cv2_resize_linear_u8(masks[0], 100, 77).astype(int)
    assert np.abs(general - np.rint(_float_bilinear(masks[0].astype(float), 100, 77))).max() <= 1


def test_refavs_miou_by_hand() -> None:
    pred = np.zeros((2, 4, 4))
    gt = np.zeros((2, 4, 4), dtype=bool)
    pred[0, 0, :] = 0.9  # frame 0: empty truth, 4 predicted pixels -> 12 of 16 empty in both
    pred[0, 1, 0] = 0.4  # exactly 0.4 is not foreground (> 0.4)
    gt[1, 2, :] = True  # frame 1: 4 true pixels, 2 found, 2 false positives
    pred[1, 2, :2] = 1.0
    pred[1, 3, :2] = 0.41
    np.testing.assert_allclose(M.refavs_miou_frames(pred, gt), [12 / (16 + 1e-7), 2 / (6 + 1e-7)], rtol=0, atol=0)
    assert M.refavs_miou(pred, gt) == pytest.approx((12 / (16 + 1e-7) + 2 / (6 + 1e-7)) / 2)


def test_refavs_fscore_by_hand() -> None:
    gt = np.zeros((1, 4, 4), dtype=bool)
    gt[0, 0, 0] = gt[0, 0, 1] = True
    pred = np.zeros((1, 4, 4))
    pred[0, 0, 0], pred[0, 0, 1], pred[0, 3, 3] = 0.9, 0.2, 0.5
    curve = M.refavs_fscore_curve(pred, gt)
    th = M.refavs_thresholds()
    f_of = lambda p, r: 1.3 * p * r / (0.3 * p + r)  # noqa: E731
    assert curve[0] == pytest.approx(f_of(2 / 16, 1.0))  # threshold 0: every pixel is predicted
    assert curve[np.searchsorted(th, 0.1)] == pytest.approx(f_of(2 / 3, 1.0))
    assert curve[np.searchsorted(th, 0.3)] == pytest.approx(f_of(1 / 2, 1 / 2))
    assert curve[np.searchsorted(th, 0.7)] == pytest.approx(f_of(1.0, 1 / 2))
    assert curve[-1] == 0.0  # nothing predicted: 0/0 -> 0
    assert M.refavs_fscore(pred, gt) == pytest.approx(0.8125)


def test_refavs_fscore_averages_curves_over_frames_with_truth() -> None:
    gt = np.zeros((3, 4, 4), dtype=bool)
    gt[0, 0, :] = gt[1, 0, :] = True  # frame 2 has no truth and is skipped
    pred = np.zeros((3, 4, 4))
    pred[0, 0, :2] = pred[0, 1, :2] = 1.0  # P = R = 1/2 -> F = 0.5
    pred[1] = gt[1]  # perfect -> 1
    pred[2] = 1.0
    assert M.refavs_fscore(pred, gt) == pytest.approx(0.75)
    assert M.refavs_fscore(pred, np.zeros_like(gt)) == 0.0  # no frame with truth scores 0


def test_refavs_null_s_by_hand() -> None:
    pred = np.zeros((2, 4, 4))
    pred[0].flat[:3] = 0.9
    pred[1].flat[:5] = 1.0
    pred[1].flat[6] = 0.5  # not above 0.5
    assert M.refavs_null_s(pred) == pytest.approx(math.sqrt(8 / 32))
    assert M.refavs_null_s(np.zeros((10, 8, 8))) == 0.0


# ------------------------------------------------------------------------------------------- the bench


def test_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--frames", "3", "--height", "40", "--width", "60"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("ratio reference/vectorised = ")
    assert any("ok" in line for line in lines)
