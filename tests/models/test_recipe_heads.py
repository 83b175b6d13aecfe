"""Recipe outputs of segmentation models: `distillation=True` (DeiT) and `aux_heads=True`
("Be Your Own Teacher") through `forward_train`, in 2D and 3D, on tiny configurations.

Known answers: the shape of every output; in eval mode the prediction is the mean of the two
heads' logits (or the head `prediction_head` names); a loss on the distillation logits alone reaches the distillation token;
the heads leave the main path untouched (same weights give the same main logits) and add no key
or module without the flags.
"""

from __future__ import annotations

import pytest
import torch

from unetr_app.errors import ConfigError
from unetr_app.models import create_model

PLAIN = {"embed_dim": 32, "depth": 2, "num_heads": 2, "feature_size": 4}
PYRAMID = {"embed_dims": [8, 16, 32, 64], "num_heads": [1, 2, 2, 4], "depths": [1, 1, 1, 1], "feature_size": 4}
SIZES = {2: (32, 64), 3: (32, 64, 32)}
# (model, tiny params, spatial_dims): each decoder ("unetr" on plain backbones, "unet" on pyramids)
CASES = [
    ("deit_tiny_distilled_patch16", PLAIN, 3),
    ("deit_tiny_distilled_patch16", PLAIN, 2),
    ("vit_tiny_patch16", PLAIN, 2),
    ("pvt_v2_b0", PYRAMID, 2),
    ("pvt_v2_b0", PYRAMID, 3),
]
IDS = [f"{name}-{dims}d" for name, _, dims in CASES]
RECIPE_KEY_PREFIXES = ("distill_head.", "aux_heads.", "encoder.dist_token", "encoder.prefix_pos_embed")


def build(name: str, params: dict, spatial_dims: int, **flags) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, task="segmentation", spatial_dims=spatial_dims, in_channels=1, out_channels=3,
                        img_size=list(SIZES[spatial_dims]), **params, **flags)


def image(spatial_dims: int) -> torch.Tensor:
    return torch.randn(2, 1, *SIZES[spatial_dims], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name, params, spatial_dims", CASES, ids=IDS)
def test_forward_train_gives_every_output_at_its_shape(name, params, spatial_dims):
    model = build(name, params, spatial_dims, distillation=True, aux_heads=True)
    outputs = model.forward_train(image(spatial_dims))
    logits_shape = (2, 3, *SIZES[spatial_dims])
    assert set(outputs) == {"logits", "distill_logits", "aux_logits", "hint_features", "deep_features"}
    assert outputs["logits"].shape == outputs["distill_logits"].shape == logits_shape
    assert [a.shape for a in outputs["aux_logits"]] == [logits_shape] * 3  # three shallower decoder stages
    deep = outputs["deep_features"]
    assert deep.shape == (2, 4, *SIZES[spatial_dims])  # the deepest stage: feature_size channels, full size
    assert [h.shape for h in outputs["hint_features"]] == [deep.shape] * 3


@pytest.mark.parametrize("name, params, spatial_dims", CASES, ids=IDS)
def test_the_flags_add_only_their_outputs(name, params, spatial_dims):
    x = image(spatial_dims)
    assert set(build(name, params, spatial_dims).forward_train(x)) == {"logits"}
    assert set(build(name, params, spatial_dims, distillation=True).forward_train(x)) == {"logits", "distill_logits"}
    assert set(build(name, params, spatial_dims, aux_heads=True).forward_train(x)) == {
        "logits", "aux_logits", "hint_features", "deep_features"}


@pytest.mark.parametrize("name, params, spatial_dims", CASES, ids=IDS)
def test_eval_prediction_averages_the_two_heads_logits(name, params, spatial_dims):
    model = build(name, params, spatial_dims, distillation=True, aux_heads=True)
    x = image(spatial_dims)
    with torch.no_grad():
        train_out = model(x)
        assert torch.equal(train_out, model.forward_train(x)["logits"])  # training mode: the main logits
        model.eval()
        outputs = model.forward_train(x)
        prediction = model(x)
    torch.testing.assert_close(prediction, (outputs["logits"] + outputs["distill_logits"]) / 2)
    assert not torch.allclose(prediction, outputs["logits"])  # the second head does count


@pytest.mark.parametrize("head, key", [("main", "logits"), ("distillation", "distill_logits")])
def test_prediction_head_picks_one_head_alone(head, key):
    model = build("deit_tiny_distilled_patch16", PLAIN, 2, distillation=True, prediction_head=head).eval()
    x = image(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_train(x)[key])


def test_an_unknown_prediction_head_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError, match=r"^prediction_head: expected one of average, main, distillation, got 'mean'$"):
        build("deit_tiny_distilled_patch16", PLAIN, 2, distillation=True, prediction_head="mean")
    with pytest.raises(ConfigError, match=r"prediction_head='distillation' needs the distillation head"):
        build("vit_tiny_patch16", PLAIN, 2, prediction_head="distillation")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_loss_on_the_distillation_logits_alone_trains_the_distillation_token(spatial_dims):
    model = build("deit_tiny_distilled_patch16", PLAIN, spatial_dims, distillation=True)
    model.forward_train(image(spatial_dims))["distill_logits"].square().mean().backward()
    assert model.encoder.dist_token.grad.abs().sum() > 0
    assert model.distill_head.token_proj.weight.grad.abs().sum() > 0
    assert model.decoder.out.conv.conv.weight.grad is None  # the main head is not on that path


@pytest.mark.parametrize("name, params, spatial_dims", CASES, ids=IDS)
def test_without_the_flags_no_recipe_module_or_key_exists(name, params, spatial_dims):
    plain = build(name, params, spatial_dims)
    explicit = build(name, params, spatial_dims, distillation=False, aux_heads=False)
    assert list(plain.state_dict()) == list(explicit.state_dict())
    assert not [k for k in plain.state_dict() if k.startswith(RECIPE_KEY_PREFIXES)]
    assert not hasattr(plain.encoder, "dist_token")
    assert plain.distill_head is None and plain.aux_heads is None


@pytest.mark.parametrize("name, params, spatial_dims", CASES, ids=IDS)
def test_with_the_flags_the_plain_keys_stay_and_only_recipe_keys_are_added(name, params, spatial_dims):
    plain = set(build(name, params, spatial_dims).state_dict())
    full = set(build(name, params, spatial_dims, distillation=True, aux_heads=True).state_dict())
    assert plain < full
    assert all(k.startswith(RECIPE_KEY_PREFIXES) for k in full - plain)


@pytest.mark.parametrize("name, params, spatial_dims", [c for c in CASES if not c[0].startswith("deit")],
                         ids=[i for i in IDS if not i.startswith("deit")])
def test_heads_leave_the_main_path_unchanged(name, params, spatial_dims):
    plain = build(name, params, spatial_dims).eval()
    full = build(name, params, spatial_dims, distillation=True, aux_heads=True).eval()
    missing, unexpected = full.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(RECIPE_KEY_PREFIXES) for k in missing)
    x = image(spatial_dims)
    with torch.no_grad():
        torch.testing.assert_close(full.forward_train(x)["logits"], plain(x))


def test_segformer_has_a_distillation_head_but_refuses_aux_heads():
    params = {**PYRAMID, "decoder_dim": 16}
    del params["feature_size"]
    model = build("segformer_b0", params, 2, distillation=True)
    outputs = model.forward_train(image(2))
    assert outputs["distill_logits"].shape == outputs["logits"].shape == (2, 3, *SIZES[2])
    with pytest.raises(ConfigError, match=r"^aux_heads=True needs a decoder with several stages; decoder 'segformer_mlp'"):
        build("segformer_b0", params, 2, aux_heads=True)


def test_classifiers_refuse_the_segmentation_flags():
    with pytest.raises(ConfigError, match="segmentation outputs"):
        create_model("deit_tiny_distilled_patch16", task="classification", spatial_dims=2, in_channels=3,
                     img_size=32, num_classes=5, distillation=True, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize("name, params", [
    ("unetr", {"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2}),
    ("swin_unetr", {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}),
])
def test_monai_nets_give_only_logits_and_refuse_the_flags(name, params):
    kwargs = {"task": "segmentation", "spatial_dims": 2, "in_channels": 1, "out_channels": 3, "img_size": [64, 64]}
    with pytest.raises(ConfigError, match=rf"^distillation=True is not supported for model '{name}'"):
        create_model(name, distillation=True, **kwargs, **params)
    model = create_model(name, **kwargs, **params)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        outputs = model.eval().forward_train(x)
        assert set(outputs) == {"logits"} and torch.equal(outputs["logits"], model(x))
