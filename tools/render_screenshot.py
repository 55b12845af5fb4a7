"""Render the extension's screenshot (``Resources/Screenshots/results.png``) in Slicer's own slice views.

The scene is built as the module builds it: a phantom CT in a real MRML scene (slicer-core), segmented and searched
for lesions by the engine in a child process (``background.runner``, the panel's route), and the results added to
the scene by ``CTDeepSegLogic`` (segments with their colours, findings as ROIs). Three slice views are then drawn
offscreen (EGL) by Slicer's slice logic and displayable managers, through trame-slicer's ``SliceView``.

    make screenshot   # builds .venv-render (slicer-core, trame-slicer) and runs this with the engine in .venv
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "Testing"), str(ROOT / "CTDeepSeg")]

import numpy as np  # noqa: E402
import vtk  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from trame_slicer.views.slice_view import SliceView  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

import slicer_harness  # noqa: E402
from CTDeepSegLib.background.runner import EngineProcess  # noqa: E402

VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))


def _capture(view: SliceView) -> np.ndarray:
    view.render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(view.render_window())
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, 3)
    return pixels[::-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("-o", "--output", default=str(ROOT / "Resources" / "Screenshots" / "results.png"))
    parser.add_argument("--size", type=int, default=420)
    arguments = parser.parse_args()

    module = slicer_harness.start()
    core = slicer_harness._core
    logic = module.CTDeepSegLogic()
    volumeNode, truthNode, lesions = logic.createPhantom(
        seed=12, shape=(96, 160, 160), spacing=(2.2, 2.2, 2.5), lesion_radius_mm=(8.0, 12.0), name="Phantom CT"
    )
    core.scene.RemoveNode(truthNode)
    volume = logic.volumeFromNode(volumeNode)
    segmentation = EngineProcess("segment", volume, device="cpu", python=arguments.engine_python).start().wait()
    segmentationNode = logic.addSegmentation(segmentation, volumeNode)
    findings, _ = EngineProcess("detect", volume, device="cpu", python=arguments.engine_python).start().wait()
    rois, _table, _ = logic.addFindings(findings, volumeNode)
    display = volumeNode.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(1500, -300)
    segmentationNode.GetDisplayNode().SetOpacity2DFill(0.35)
    for roi in rois:
        roi.GetDisplayNode().SetHandlesInteractive(False)  # outlines only, as when the ROIs are not being edited

    target = max(lesions, key=lambda lesion: lesion.radius_mm)
    centre_ras = [-target.centre_lps_mm[0], -target.centre_lps_mm[1], target.centre_lps_mm[2]]
    panels = []
    for name, orientation in VIEWS:
        view = SliceView(core.scene, core.app_logic, name)
        view.render_window().SetSize(arguments.size, arguments.size)
        view.update_size(arguments.size, arguments.size)
        view.set_orientation(orientation)
        view.set_background_volume_id(volumeNode.GetID())
        view.fit_view_to_content()
        view.get_view_node().JumpSliceByOffsetting(*centre_ras)  # through the lesion, without panning
        panels.append(_capture(view))
    picture = Image.fromarray(np.concatenate(panels, axis=1))
    caption = (
        f"CTDeepSeg in Slicer's slice views: {segmentation.card.name} segments (lung, liver, spine, lesion) "
        f"and {len(rois)} detector finding(s) as ROIs, on a synthetic CT phantom"
    )
    canvas = Image.new("RGB", (picture.width, picture.height + 28), "black")
    canvas.paste(picture, (0, 28))
    ImageDraw.Draw(canvas).text((8, 8), caption, fill=(235, 235, 235))
    Path(arguments.output).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(arguments.output, optimize=True)
    print(f"Wrote {arguments.output} ({canvas.width}x{canvas.height}); {len(rois)} findings")


if __name__ == "__main__":
    main()
