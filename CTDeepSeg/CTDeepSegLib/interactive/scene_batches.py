"""The interactive recipe's training batches as a torch dataset, for the DataLoader worker that draws them.

A module of its own because the class must be importable by name: where worker processes are spawned rather
than forked (macOS, Windows), the dataset is pickled into them by reference to its module and class. It imports
torch at the top, so only training imports it, and only when it starts.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .training import InteractiveRecipe, draw_scene, make_sample


class SceneBatches(torch.utils.data.IterableDataset):
    """Endless (inputs, targets) batches of the recipe, drawn from its seed: two samples per scene."""

    def __init__(self, recipe: InteractiveRecipe, lesions: dict, organs: dict) -> None:
        super().__init__()
        self.recipe, self.lesions, self.organs = recipe, lesions, organs

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        recipe, rng = self.recipe, np.random.default_rng(self.recipe.seed)
        while True:
            samples = []
            while len(samples) < recipe.batch:
                image, target = draw_scene(rng, recipe, self.lesions, self.organs)
                samples += [make_sample(rng, image, target, recipe.sigma_voxels, recipe.prompt_dropout) for _ in (0, 1)]
            inputs = np.stack([s[0] for s in samples[: recipe.batch]])
            targets = np.stack([s[1] for s in samples[: recipe.batch]])[:, None]
            yield torch.from_numpy(inputs), torch.from_numpy(targets)
