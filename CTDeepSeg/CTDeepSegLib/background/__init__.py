"""Engine work in a child Python process: the runner (parent side), the worker (child side), and the file
format their inputs and results travel in. Plain Python (``subprocess``), so it is tested without Qt; the
Slicer panel only polls the runner from a timer."""
