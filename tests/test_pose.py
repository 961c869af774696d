"""SimCC targets, loss and head; PCKh/PCK on hand-computed cases; the MPII reader and affine crop on files
written here; the stick-figure stand-in."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from flatsam.models import build_model
from flatsam.pose import (
    JOINTS,
    data,
    decode,
    encode,
    head_size,
    mpii,
    pck_hits,
    simcc_loss,
    simcc_model,
    torso_size,
)
from flatsam.pose.figures import stick_figures

K = len(JOINTS)


@pytest.mark.parametrize("split", [1.0, 2.0, 3.0])
def test_encode_decode_round_trips_within_one_bin(split):
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(200, generator=g, dtype=torch.float64) * 63
    target = encode(coords, torch.ones(200), 64, split, sigma=2.0)
    assert target.shape == (200, int(64 * split))
    assert (decode(target, split) - coords).abs().max() <= 1 / split  # one bin = 1/split pixels
    # a density in bins: sums to about 1 away from the edges, peak 1/(sigma*sqrt(2*pi)) on a bin centre
    on_bin = encode(torch.tensor([20.0]), torch.ones(1), 64, split, 2.0)
    assert float(on_bin.max()) == pytest.approx(1 / (2 * math.sqrt(2 * math.pi)))
    assert float(on_bin.sum()) == pytest.approx(1.0, abs=1e-6)


def test_encode_literal_values_and_invisible_joints():
    target = encode(torch.tensor([1.25, 3.0]), torch.tensor([1.0, 0.0]), 4, 2.0, sigma=1.5)
    mu = 2.5
    expected = [math.exp(-((i - mu) ** 2) / (2 * 1.5**2)) / (1.5 * math.sqrt(2 * math.pi)) for i in range(8)]
    assert target[0].tolist() == pytest.approx(expected)
    assert target[1].abs().sum() == 0
    with pytest.raises(ValueError, match="sigma must be > 0"):
        encode(torch.zeros(1), torch.ones(1), 4, 2.0, 0.0)


def test_simcc_loss_per_sample_equals_the_official_reduction_by_hand():
    g = torch.Generator().manual_seed(1)
    size, split, sigma = (6, 5), 2.0, 1.0  # H=6, W=5
    lx = torch.randn(3, K, 10, generator=g, dtype=torch.float64)
    ly = torch.randn(3, K, 12, generator=g, dtype=torch.float64)
    joints = torch.cat([torch.rand(3, K, 2, generator=g, dtype=torch.float64) * 4, torch.ones(3, K, 1)], -1)
    joints[0, 3, 2] = 0
    joints[2, :5, 2] = 0
    losses = simcc_loss(lx, ly, joints, size, split, sigma)
    assert losses.shape == (3,)
    for b in range(3):
        total = 0.0
        for j in range(K):
            w = float(joints[b, j, 2])
            for logits, coord, bins in ((lx, joints[b, j, 0], 10), (ly, joints[b, j, 1], 12)):
                logp = torch.log_softmax(logits[b, j], 0)
                t = [
                    w * math.exp(-((i - 2 * float(coord)) ** 2) / 2) / math.sqrt(2 * math.pi)
                    for i in range(bins)
                ]
                kl = sum(
                    ti * (math.log(ti) - float(lp)) if ti > 0 else 0.0 for ti, lp in zip(t, logp, strict=True)
                )
                total += w * kl / bins
        assert float(losses[b]) == pytest.approx(total / K, rel=1e-10)
    # the batch mean of the per-sample losses is the official batch loss
    mean = (
        sum(
            (
                F.kl_div(
                    torch.log_softmax(lg[:, j], -1),
                    encode(joints[:, j, a], joints[:, j, 2], n, split, sigma),
                    reduction="none",
                )
                .mean(1)
                .mul(joints[:, j, 2])
                .mean()
            )
            for j in range(K)
            for lg, a, n in ((lx, 0, 5), (ly, 1, 6))
        )
        / K
    )
    assert float(losses.mean()) == pytest.approx(float(mean), rel=1e-10)


def test_simcc_model_on_a_flatsam_backbone_gives_bin_logits():
    torch.manual_seed(0)
    model = simcc_model(build_model("resnet8", 1, 1), 1, K, (32, 48), split=2.0)
    lx, ly = model(torch.randn(2, 1, 32, 48))
    assert lx.shape == (2, K, 96) and ly.shape == (2, K, 64)
    with pytest.raises(ValueError, match="no 'head' module"):
        simcc_model(build_model("cnn", 1, 1), 1, K, (28, 28))
    with pytest.raises(ValueError, match="splitting factor must be > 0"):
        simcc_model(build_model("resnet8", 1, 1), 1, K, (28, 28), split=0)


def test_head_size_is_0_6_times_the_head_box_diagonal():
    boxes = torch.tensor([[10.0, 20.0, 13.0, 24.0], [0.0, 0.0, 6.0, 8.0]])
    assert head_size(boxes).tolist() == pytest.approx([0.6 * 5, 0.6 * 10])


def test_pckh_on_a_hand_computed_case():
    # two samples, head sizes 3 and 6: threshold 0.5 → 1.5 and 3 pixels
    gt = torch.zeros(2, 3, 3)
    gt[..., 2] = 1
    gt[0, 2, 2] = 0  # invisible: not counted
    pred = torch.zeros(2, 3, 2)
    pred[0, 0] = torch.tensor([1.5, 0.0])  # error 1.5 <= 1.5: correct
    pred[0, 1] = torch.tensor([1.2, 1.2])  # error 1.697 > 1.5: wrong
    pred[0, 2] = torch.tensor([9.0, 9.0])  # invisible
    pred[1, 0] = torch.tensor([3.0, 0.0])  # 3 <= 3: correct
    pred[1, 1] = torch.tensor([0.0, 3.1])  # wrong
    pred[1, 2] = torch.tensor([2.0, 2.0])  # 2.83: correct
    assert pck_hits(pred, gt, torch.tensor([3.0, 6.0]), 0.5) == (3, 5)
    # a sample without a head box (nan) does not count
    assert pck_hits(pred, gt, torch.tensor([math.nan, 6.0]), 0.5) == (2, 3)


def test_torso_size_uses_left_shoulder_and_right_hip():
    joints = torch.zeros(2, K, 3)
    ls, rh = JOINTS.index("l_shoulder"), JOINTS.index("r_hip")
    joints[:, ls] = torch.tensor([3.0, 0.0, 1.0])
    joints[:, rh] = torch.tensor([0.0, 4.0, 1.0])
    joints[1, rh, 2] = 0
    size = torso_size(joints, ls, rh)
    assert float(size[0]) == 5.0 and math.isnan(float(size[1]))


# -- MPII reader ---------------------------------------------------------------------------------------


def record(image="a.png", **over):
    base = {
        "image": image,
        "center": [21.0, 11.0],
        "scale": 0.1,
        "joints": [[11.0 + i, 6.0 + i] for i in range(K)],
        "joints_vis": [1] * (K - 1) + [0],
    }
    return {**base, **over}


def write_mpii(root, train, val, image_size=(40, 30)):
    from PIL import Image

    (root / "annot").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "annot" / "mpii_train.json").write_text(json.dumps(train))
    (root / "annot" / "mpii_val.json").write_text(json.dumps(val))
    w, h = image_size
    pixels = torch.zeros(h, w, 3, dtype=torch.uint8)
    pixels[10, 20] = torch.tensor([255, 128, 64])  # 0-based (x=20, y=10): MATLAB (21, 11)
    Image.fromarray(pixels.numpy()).save(root / "images" / "a.png")
    return root


def test_mpii_reader_crops_images_and_joints_consistently(tmp_path):
    # centre (21, 11) 1-based; HRNet's adjustment: 0-based (20, 10 + 15 * 0.1), box 1.25 * 0.1 * 200 = 25
    val = [record(headbox=[9.0, 4.0, 12.0, 8.0]), record(joints=[[21.0, 11.0]] * K)]
    train = [record(joints=[[11.0 + 2 * i, 6.0 + 2 * i] for i in range(K)])]
    root = write_mpii(tmp_path, train, val)
    d = mpii.load_mpii(root, 25)
    assert d.train_x.shape == (1, 3, 25, 25) and d.test_x.shape == (2, 3, 25, 25)
    # box of side 25 around (20, 11.5) starts at (7.5, -1): the bright pixel (20, 10) lands at (12.5, 11)
    # in crop pixels: between pixels 12 and 13 in x, so bilinear sampling halves it there
    crop = d.test_x[1, 0].float()
    assert float(crop[11, 12]) == pytest.approx(127.5, abs=1) and float(crop[11, 13]) == pytest.approx(
        127.5, abs=1
    )
    assert d.test_y[1, 0, :2].tolist() == pytest.approx([12.5, 11.0])
    # joints 0-based and shifted: joint i at (2.5 + 2i, 6 + 2i); below the crop (y > 24) from i = 10 on
    first = d.train_y[0]
    assert first[3].tolist() == pytest.approx([8.5, 12.0, 1.0])
    assert first[:, 2].tolist() == [1.0] * 10 + [0.0] * 6  # the last one is also annotated invisible
    # head box → crop pixels; no head box → nan
    assert d.test_head_boxes[0].tolist() == pytest.approx([8 - 7.5, 3 + 1, 11 - 7.5, 7 + 1])
    assert torch.isnan(d.test_head_boxes[1]).all()


@pytest.mark.parametrize(
    "content,message",
    [
        ("not json", "not valid JSON"),
        ("{}", "non-empty JSON list"),
        (
            json.dumps([record(joints=[[1, 2]] * 3)]),
            r"record 0 'joints': expected finite numbers of shape \[16, 2\]",
        ),
        (json.dumps([record(), {"image": "a.png"}]), r"record 1: missing keys \['center'"),
        (json.dumps([record(scale=-1)]), "'scale' must be a number > 0"),
        (json.dumps([record(center=["a", 1])]), "record 0 'center': expected numbers"),
        (json.dumps([record(joints_vis=[1] * 15)]), "record 0 'joints_vis'"),
        (json.dumps([record(image=3)]), "'image' must be a file name"),
    ],
)
def test_mpii_reader_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "mpii_val.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        mpii.read_annotations(path)
    assert str(path) in str(info.value)


def test_mpii_missing_files_and_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images folder"):
        mpii.load_mpii(tmp_path, 16)
    root = write_mpii(tmp_path / "m", [record(image="missing.jpg")], [record()])
    with pytest.raises(FileNotFoundError, match="MPII image not found: .*missing.jpg"):
        mpii.load_mpii(root, 16)
    (root / "annot" / "mpii_val.json").unlink()
    with pytest.raises(FileNotFoundError, match="mpii_val.json not found"):
        mpii.load_mpii(root, 16)
    with pytest.raises(ValueError, match="needs --data-dir"):
        data.load_pose_dataset("mpii", None, 16)
    with pytest.raises(ValueError, match="unknown pose dataset 'coco'"):
        data.load_pose_dataset("coco", None, 16)


def test_to_crop_inverts_affine_crop_on_a_point():
    image = torch.zeros(1, 50, 60)
    image[0, 31, 17] = 1.0
    center, box, size = torch.tensor([20.0, 30.0]), 20.0, 40  # 2× zoom
    crop = mpii.affine_crop(image, center, box, size)
    x, y = mpii.to_crop(torch.tensor([17.0, 31.0]), center, box, size).tolist()
    assert (x, y) == pytest.approx([(17 - 10 + 0.5) * 2 - 0.5, (31 - 20 + 0.5) * 2 - 0.5])
    # bilinear: the mass around the mapped point, symmetric about it
    ys, xs = torch.nonzero(crop[0] > 0, as_tuple=True)
    weights = crop[0][ys, xs]
    assert float((xs * weights).sum() / weights.sum()) == pytest.approx(x)
    assert float((ys * weights).sum() / weights.sum()) == pytest.approx(y)
    assert crop.shape == (1, 40, 40)


# -- stand-in ------------------------------------------------------------------------------------------


def test_stick_figures_are_seeded_with_exact_joints_and_head_boxes():
    a = stick_figures(30, 10, 32, seed=3)
    b = stick_figures(30, 10, 32, seed=3)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert torch.equal(stick_figures(5, 10, 32, seed=3).test_x, a.test_x)  # test set independent of num_train
    assert a.train_x.shape == (30, 1, 32, 32) and a.train_y.shape == (30, K, 3)
    inside = ((a.train_y[..., :2] >= 0) & (a.train_y[..., :2] <= 31)).all(-1)
    assert torch.equal(inside.float(), a.train_y[..., 2])
    # the figure is drawn where its joints are: pixels at visible joints are brighter than the average
    n, k = torch.nonzero(a.train_y[..., 2] > 0, as_tuple=True)
    xy = a.train_y[n, k, :2].round().long()
    at_joints = a.train_x[n, 0, xy[:, 1], xy[:, 0]].float().mean()
    assert float(at_joints) > 2 * float(a.train_x.float().mean())
    assert (head_size(a.test_head_boxes) > 0).all()
    with pytest.raises(ValueError, match="pose input size must be >= 16"):
        stick_figures(3, 3, 8)
