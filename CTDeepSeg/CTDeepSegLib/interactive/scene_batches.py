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
    """Endless (inputs, targets) batches of the recipe, drawn from its seed: two samples per scene. The first
    worker draws the seed's own stream (what a single worker draws); each further worker the stream of (seed, its
    number)."""

    def __init__(self, recipe: InteractiveRecipe, lesions: dict, organs: dict) -> None:
        super().__init__()
        self.recipe, self.lesions, self.organs = recipe, lesions, organs

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        recipe, worker = self.recipe, torch.utils.data.get_worker_info()
        rng = np.random.default_rng(recipe.seed if worker is None or worker.id == 0 else [recipe.seed, worker.id])
        while True:
            samples = []
            while len(samples) < recipe.batch:
                image, target = draw_scene(rng, recipe, self.lesions, self.organs)
                samples += [make_sample(rng, image, target, recipe.sigma_voxels, recipe.prompt_dropout) for _ in (0, 1)]
            inputs = np.stack([s[0] for s in samples[: recipe.batch]])
            targets = np.stack([s[1] for s in samples[: recipe.batch]])[:, None]
            yield torch.from_numpy(inputs), torch.from_numpy(targets)
