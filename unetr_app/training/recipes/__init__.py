"""Training recipes: how one batch becomes a loss. The trainer's loop is the same for all of them.

A recipe is an `nn.Module` chosen by name in the config (`recipe: {name: ..., params: {...}}`).
It owns the trainable network (`recipe.model`, the only module the optimizer and DDP see), and any
frozen modules (a teacher) or moving-average copies it needs. One call per training batch:

    parts = recipe(batch)     # {"loss": scalar for backward, "output": main logits for metrics,
                              #  and named loss parts, e.g. "task_loss", "distill_loss"}

Parts other than `loss` and `output` are logged to metrics.jsonl and curves.png as their mean
over the steps logged.
"""

from unetr_app.training.recipes.base import Recipe, build_recipe, list_recipes, model_arguments, recipe_class, register_recipe

__all__ = ["Recipe", "build_recipe", "list_recipes", "model_arguments", "recipe_class", "register_recipe"]
