"""Training recipes: how one batch becomes a loss. The trainer's loop is the same for all of them.

A recipe is an `nn.Module` chosen by name in the config (`recipe: {name: ..., params: {...}}`).
It owns the trainable network (`recipe.model`, the only module the optimizer and DDP see), and any
frozen modules (a teacher) or moving-average copies it needs. One call per training batch:

    parts = recipe(batch)     # {"loss": scalar for backward, "output": main logits for metrics,
                              #  and named loss parts, e.g. "task_loss", "distill_loss"}

Parts other than `loss` and `output` are logged to metrics.jsonl and curves.png as their mean
over the steps logged: a loss part is defined where its recipe's `forward` returns it. Each recipe
declares its `recipe.params` as a typed `Params` model, its model heads (`model_kwargs`), its DDP
wrapping and its checkpoint state (`extra_state`); `self_supervised` ones also bring the loader
`unetr pretrain` trains them on. See base.py.
"""

from unetr_app.training.recipes.base import Recipe, build_recipe, list_recipes, model_arguments, recipe_class, register_recipe

__all__ = ["Recipe", "build_recipe", "list_recipes", "model_arguments", "recipe_class", "register_recipe"]
