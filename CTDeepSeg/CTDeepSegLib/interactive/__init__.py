"""Interactive segmentation: click inside an object (or draw a box around it) and get it in 3D, refined click by
click. ``prompts`` (what the user gave), ``crop`` (the grid the network sees), ``encoding`` (network input),
``engine`` (one click), ``simulation`` (the clicks of the evaluation protocol), ``synthesis`` and ``training``
(the shipped model's recipe), ``evaluation`` (replaying clicks on cases with reference labels)."""
