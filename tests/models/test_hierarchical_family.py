"""The hierarchical family (PVT, PVT-v2, Swin, MViTv2, SegFormer) as 2D/3D backbones.

Known answers: every registered configuration's parameter count at 224x224, 3 channels, 1000-class
head, against the reference implementations; MONAI's SwinUNETR unchanged; the decomposed
relative-position bias against a brute-force sum. Then 3D behaviour on non-cubic volumes
(tiny widths), size errors, and training + prediction through the CLI on the phantom.
"""

from __future__ import annotations

import itertools
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import SwinUNETR

from unetr_app.models import create_model, get_model_entry, list_models
from unetr_app.models.mvit import add_decomposed_rel_pos
from unetr_app.io.checkpoint import load_model

FAMILIES = ("pvt", "pvt_v2", "swin", "mvitv2", "segformer")

# name -> (parameters, where the number comes from). Classifiers at 224², 3 channels, 1000 classes;
# mit_b* without a head (the SegFormer encoder); segformer_b* with 150 classes (ADE20K).
PARAMETER_COUNTS = {
    # PVT-v1 paper (Table 2) gives 13.2 M / 24.5 M; no exact figure is published, so the exact
    # numbers are derived from the architecture (class token + per-stage position embeddings at 224²).
    "pvt_tiny": (13_229_288, "derived; paper 13.2 M"),
    "pvt_small": (24_485_864, "derived; paper 24.5 M"),
    # PVT-v2: timm / the official repo.
    "pvt_v2_b0": (3_666_760, "published"),
    "pvt_v2_b1": (14_009_000, "published"),
    "pvt_v2_b2": (25_362_856, "published"),
    "pvt_v2_b2_li": (22_553_512, "published"),
    "pvt_v2_b3": (45_238_696, "published"),
    "pvt_v2_b4": (62_556_072, "published"),
    # B5 (depths 3-6-40-3, MLP ratio 4 everywhere) adds up to 81,956,008 from B4's exact count:
    # -3 x 35,584 (stage-1 MLP ratio 8 -> 4), 8 -> 6 stage-2 blocks at ratio 4 instead of 8
    # (-2,025,472), +13 stage-3 blocks x 1,656,320. The figure 81,959,912 sometimes quoted is
    # 3,904 higher and matches no block or stage size; the paper's rounded 82.0 M agrees with both.
    "pvt_v2_b5": (81_956_008, "derived; paper 82.0 M"),
    # Swin: published counts (swin_tiny/small/base_patch4_window7_224). MONAI's blocks reach them
    # exactly because the stages are assembled in the reference order (merge at the start of
    # stages 2-4); MONAI's own SwinTransformer merges after every stage, which would add a
    # 16C-wide merge after the last stage (+4.7 M for Swin-T) and end at stride 64.
    "swin_t": (28_288_354, "published"),
    "swin_s": (49_606_258, "published"),
    "swin_b": (87_768_224, "published"),
    # MViTv2: timm (relative-position tables sized for 224²).
    "mvitv2_tiny": (24_173_320, "published"),
    "mvitv2_small": (34_870_216, "published"),
    # Mix Transformer encoders: B0 published (SegFormer's released encoder); B1-B5 derived from the
    # architecture. Each plus its decoder gives the paper's totals below.
    "mit_b0": (3_319_392, "published"),
    "mit_b1": (13_151_424, "derived"),
    "mit_b2": (24_196_288, "derived"),
    "mit_b3": (44_072_128, "derived"),
    "mit_b4": (60_842_688, "derived"),
    "mit_b5": (81_443_008, "derived"),
    # SegFormer with 150 classes: B0 published; B1-B5 derived, matching the paper's Table 1
    # (13.7, 27.5, 47.3, 64.1, 84.7 M).
    "segformer_b0": (3_752_694, "published"),
    "segformer_b1": (13_715_798, "derived; paper 13.7 M"),
    "segformer_b2": (27_461_974, "derived; paper 27.5 M"),
    "segformer_b3": (47_337_814, "derived; paper 47.3 M"),
    "segformer_b4": (64_108_374, "derived; paper 64.1 M"),
    "segformer_b5": (84_708_694, "derived; paper 84.7 M"),
}
SEGFORMER_PAPER_TOTALS_M = {
    "segformer_b1": 13.7, "segformer_b2": 27.5, "segformer_b3": 47.3, "segformer_b4": 64.1, "segformer_b5": 84.7,
}

# Tiny widths and depths per family: seconds on a CPU, same code paths as the full models.
TINY = {
    "pvt": {"embed_dims": [8, 16, 32, 64], "num_heads": [1, 2, 2, 4], "depths": [1, 1, 1, 1]},
    "pvt_v2": {"embed_dims": [8, 16, 32, 64], "num_heads": [1, 2, 2, 4], "depths": [1, 1, 1, 1]},
    "segformer": {"embed_dims": [8, 16, 32, 64], "num_heads": [1, 2, 2, 4], "depths": [1, 1, 1, 1]},
    "swin": {"embed_dim": 8, "num_heads": [1, 2, 2, 4], "depths": [2, 1, 1, 1]},
    "mvitv2": {"embed_dim": 8, "num_heads": 1, "depths": [1, 2, 1, 1]},
}
# One model per distinct architecture; the other variants differ only in the widths and depths
# that TINY replaces (their full configurations are checked by the parameter counts).
ARCHITECTURES = ["pvt_tiny", "pvt_v2_b0", "pvt_v2_b2_li", "swin_t", "mvitv2_tiny", "mit_b0", "segformer_b0"]


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def family_models() -> list[str]:
    return [n for n in list_models() if get_model_entry(n).family in FAMILIES]


def tiny_params(name: str, task: str = "segmentation") -> dict:
    params = dict(TINY[get_model_entry(name).family])
    if task == "segmentation":
        params.update({"decoder_dim": 16} if name.startswith("segformer") else {"feature_size": 4})
    return params


def build_reference_size(name: str) -> torch.nn.Module:
    common = {"spatial_dims": 2, "in_channels": 3, "img_size": 224}
    if name.startswith("segformer"):
        return create_model(name, task="segmentation", out_channels=150, **common)
    return create_model(name, task="classification", num_classes=0 if name.startswith("mit") else 1000, **common)


# --- known answers ---------------------------------------------------------------------------


def test_every_registered_configuration_has_a_known_count():
    assert set(family_models()) - {"swin_unetr"} == set(PARAMETER_COUNTS)


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_parameter_count_matches_reference(name):
    expected, source = PARAMETER_COUNTS[name]
    with torch.device("meta"):  # shapes only: the count without allocating 80 M floats
        model = build_reference_size(name)
    assert parameters(model) == expected, f"{name} ({source})"
    if name in SEGFORMER_PAPER_TOTALS_M:
        assert round(expected / 1e6, 1) == SEGFORMER_PAPER_TOTALS_M[name]


def test_segformer_is_its_mit_encoder_plus_the_mlp_decoder():
    # decoder for B0, 150 classes: 4 linear projections to 256, 1x1 fuse (no bias) + BatchNorm, 1x1 classifier
    decoder = (32 + 64 + 160 + 256) * 256 + 4 * 256 + 4 * 256 * 256 + 2 * 256 + 256 * 150 + 150
    assert PARAMETER_COUNTS["segformer_b0"][0] == PARAMETER_COUNTS["mit_b0"][0] + decoder == 3_752_694


def test_swin_unetr_is_monai_swinunetr_unchanged():
    torch.manual_seed(0)
    ours = create_model("swin_unetr", spatial_dims=2, in_channels=1, out_channels=3, img_size=[64, 96], feature_size=12)
    monai = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, spatial_dims=2)
    monai.load_state_dict(ours.state_dict())  # strict: same modules, same names
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), monai.eval()(x))


@pytest.mark.parametrize("q_grid, k_grid", [((4, 6), (2, 3)), ((2, 3, 4), (2, 3, 4)), ((4, 2, 2), (1, 1, 1))])
def test_decomposed_relative_position_matches_brute_force(q_grid, k_grid):
    torch.manual_seed(0)
    heads, channels = 2, 5
    q = torch.randn(1, heads, math.prod(q_grid), channels)
    tables = torch.nn.ParameterList(
        torch.nn.Parameter(torch.randn(2 * max(a, b) - 1, channels)) for a, b in zip(q_grid, k_grid)
    )
    got = add_decomposed_rel_pos(torch.zeros(1, heads, q.shape[2], math.prod(k_grid)), q, q_grid, k_grid, tables)

    expected = torch.zeros_like(got)
    q_positions = list(itertools.product(*map(range, q_grid)))
    k_positions = list(itertools.product(*map(range, k_grid)))
    for (i, qp), (j, kp) in itertools.product(enumerate(q_positions), enumerate(k_positions)):
        for axis, table in enumerate(tables):
            q_len, k_len = q_grid[axis], k_grid[axis]
            q_scale, k_scale = max(k_len / q_len, 1.0), max(q_len / k_len, 1.0)
            offset = int(qp[axis] * q_scale - kp[axis] * k_scale + (k_len - 1) * k_scale)
            expected[0, :, i, j] += q[0, :, i] @ table[offset]
    torch.testing.assert_close(got, expected)


# --- 2D and 3D behaviour on tiny models --------------------------------------------------------


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_3d_non_cubic_forward_backward_and_feature_maps(name):
    torch.manual_seed(0)
    size = (64, 32, 96)  # a different multiple of 32 per axis; larger volumes only cost time
    common = {"spatial_dims": 3, "in_channels": 1, "img_size": list(size)}
    x = torch.randn(1, 1, *size)
    if get_model_entry(name).tasks != ("segmentation",):
        backbone = create_model(
            name, task="classification", num_classes=0, **common, **tiny_params(name, "classification")
        )
        features = backbone.forward_features(x)
        assert [f["reduction"] for f in backbone.feature_info] == [4, 8, 16, 32]
        assert [tuple(f.shape) for f in features] == [
            (1, info["num_chs"], *(s // info["reduction"] for s in size)) for info in backbone.feature_info
        ]
    model = create_model(name, task="segmentation", out_channels=3, **common, **tiny_params(name))
    logits = model(x)
    assert logits.shape == (1, 3, *size)
    logits.square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters that get no gradient: {unused}"


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_2d_classifier_and_segmentation_on_a_non_square_image(name):
    common = {"spatial_dims": 2, "in_channels": 3, "img_size": [64, 96]}
    x = torch.randn(2, 3, 64, 96)
    if get_model_entry(name).tasks != ("segmentation",):
        classifier = create_model(
            name, task="classification", num_classes=7, **common, **tiny_params(name, "classification")
        )
        assert classifier(x).shape == (2, 7)
    segmenter = create_model(name, task="segmentation", out_channels=4, **common, **tiny_params(name))
    assert segmenter(x).shape == (2, 4, 64, 96)


@pytest.mark.parametrize("name", ["pvt_tiny", "mvitv2_tiny"])
def test_size_bound_parameters_follow_another_input_size(name):
    # PVT's position embeddings and MViTv2's relative-position tables are sized for img_size;
    # other sizes the strides divide interpolate them.
    model = create_model(name, task="segmentation", spatial_dims=3, in_channels=1, out_channels=2,
                         img_size=[64, 64, 64], **tiny_params(name))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 96, 32, 64)).shape == (1, 2, 96, 32, 64)


def test_linear_pvt_v2_pools_keys_to_seven_per_axis_whatever_the_size():
    model = create_model("pvt_v2_b2_li", task="classification", num_classes=0, spatial_dims=3, in_channels=1,
                         img_size=[64, 64, 64], **tiny_params("pvt_v2_b2_li", "classification"))
    reduce = model.stages[0].blocks[0].attn.reduce
    seen = []
    reduce.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape[2:])))
    for size in [(64, 64, 64), (96, 32, 128)]:
        model.forward_features(torch.randn(1, 1, *size))
    assert seen == [(7, 7, 7), (7, 7, 7)]


@pytest.mark.parametrize("name", family_models())
def test_sizes_the_strides_do_not_divide_are_refused_with_the_allowed_sizes(name):
    with pytest.raises(ValueError, match=r"multiples of 32 \(e\.g\. \(96, 64, 96\)\)"):
        create_model(name, task="segmentation", spatial_dims=3, in_channels=1, out_channels=2, img_size=[96, 64, 100])


def test_a_forward_input_the_strides_do_not_divide_is_refused():
    model = create_model("pvt_v2_b0", task="segmentation", spatial_dims=3, in_channels=1, out_channels=2,
                         img_size=[64, 64, 64], **tiny_params("pvt_v2_b0"))
    with pytest.raises(ValueError, match=r"spatial size \(64, 64, 48\) is not divisible by its deepest stride 32"):
        model(torch.randn(1, 1, 64, 64, 48))


def test_single_voxel_deepest_stage_with_instance_norm_is_refused_at_build_time():
    with pytest.raises(ValueError, match="single voxel at stride 32.*norm_name='batch'"):
        create_model("swin_t", task="segmentation", spatial_dims=3, in_channels=1, out_channels=2,
                     img_size=[32, 32, 32], **tiny_params("swin_t"))
    model = create_model("swin_t", task="segmentation", spatial_dims=3, in_channels=1, out_channels=2,
                         img_size=[32, 32, 32], norm_name="batch", **tiny_params("swin_t"))
    assert model(torch.randn(2, 1, 32, 32, 32)).shape == (2, 2, 32, 32, 32)


def test_bad_stage_configuration_names_the_key():
    with pytest.raises(ValueError, match="depths must list one value per stage"):
        create_model("pvt_v2_b0", task="classification", spatial_dims=2, in_channels=3, img_size=64, depths=[2, 2, 2])
    with pytest.raises(ValueError, match="stage 3: embed_dim 32 must be divisible by num_heads 5"):
        create_model("mit_b0", task="classification", spatial_dims=2, in_channels=3, img_size=64,
                     embed_dims=[8, 16, 32, 64])  # mit_b0 keeps its 1-2-5-8 heads


# --- through the CLI: train on the phantom, then predict -------------------------------------


def model_overrides(name: str) -> list[str]:
    params = {"feature_size": 12, "depths": [1, 1, 1, 1]} if name == "swin_unetr" else tiny_params(name)
    return [arg for key, value in params.items() for arg in ("--set", f"model.params.{key}={value}")]


@pytest.mark.parametrize("name", [*ARCHITECTURES, "swin_unetr"])
def test_unetr_train_then_predict_with_each_architecture(name, cli, tmp_path, phantom_dir, tiny_profile):
    # A non-cubic ROI that keeps two voxels on one axis at stride 32 (instance norm needs more than one).
    run = tmp_path / "run"
    trained = cli(
        "train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--out", run, "--device", "cpu",
        "--model", name, "--epochs", 1, "--set", "training.val_fraction=0.34",
        "--set", "preprocessing.roi_size=[64,32,32]", *model_overrides(name),
    )
    assert trained.exit_code == 0, trained.output
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["model"] == name and summary["epochs"] == 1
    assert math.isfinite(summary["final_train_loss"])
    assert load_model(run).name == name

    scan = sorted((phantom_dir / "imagesTs").glob("*.nii.gz"))[0]
    predicted = cli("predict", scan, tmp_path / "masks", "-c", run, "--device", "cpu", "--quiet")
    assert predicted.exit_code == 0, predicted.output
    image, mask = nib.load(scan), nib.load(tmp_path / "masks" / scan.name)
    assert mask.shape == image.shape
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)
