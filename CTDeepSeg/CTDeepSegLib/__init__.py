"""CTDeepSeg's engine: segmentation, detection, evaluation and training data for CT and MRI volumes.

Plain Python on numpy, SimpleITK, torch and MONAI. It never imports ``slicer``, ``qt``, ``ctk`` or ``vtk``;
the one exception, ``mrml_bridge``, is imported only by the Slicer module. Importing this package is cheap:
torch and MONAI are imported by the functions that need them.
"""

__version__ = "0.1.0"
