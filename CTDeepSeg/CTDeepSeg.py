"""CTDeepSeg: deep-learning segmentation and detection of CT and MRI in 3D Slicer.

Scripted-module layout as in Slicer's template: ``CTDeepSeg`` (module metadata), ``CTDeepSegWidget`` (binds the
``.ui`` panel to the logic and nothing more), ``CTDeepSegLogic`` (all the work, usable from the Python console
with no GUI: ``slicer.util.getModuleLogic("CTDeepSeg")``) and ``CTDeepSegTest`` (the self-test).

The heavy lifting lives in ``CTDeepSegLib`` (plain Python); ``CTDeepSegLib.mrml_bridge`` converts between its
objects and MRML nodes. Nothing heavy is imported here at file scope: torch and MONAI load on first use, after
the user agreed to install them if they are missing. Qt is imported only inside the widget, so the logic and
the self-test also run on Slicer's non-GUI core.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CTDeepSegLib.dependencies import Requirement, missing_requirements
from CTDeepSegLib.errors import CancelledError, CTDeepSegError
from CTDeepSegLib.jobs import Job, Progress

#
# CTDeepSeg
#


class CTDeepSeg(ScriptedLoadableModule):
    """Module metadata shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CTDeepSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["CTDeepSeg team"]
        self.parent.helpText = (
            "Deep-learning segmentation and lesion detection for CT and MRI: segment, detect, measure, clean up, "
            "and turn corrected labels into training data. Work runs in the background with progress and "
            "cancel. The same features are available from the Python console through "
            '<code>slicer.util.getModuleLogic("CTDeepSeg")</code> and from the <code>ctdeepseg</code> command '
            "line. The shipped models are demonstration models, not for clinical use."
        )
        self.parent.acknowledgementText = (
            "Built on 3D Slicer, MONAI, PyTorch, torchvision and SimpleITK. Test cases come from the "
            "pyradiomics project (BSD-3-Clause)."
        )


#
# CTDeepSegWidget
#


class CTDeepSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the widgets of ``Resources/UI/CTDeepSeg.ui`` to ``CTDeepSegLogic``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._job: Job | None = None
        self._onJobDone: Callable[[Any], None] | None = None
        self._timer = None
        self._models: list = []
        self._detectors: list = []
        self._findingRois: list = []

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTDeepSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTDeepSegLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._pollJob)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.createPhantomButton.connect("clicked(bool)", self.onCreatePhantom)
        self.ui.checkDependenciesButton.connect("clicked(bool)", self.onCheckDependencies)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.postprocessButton.connect("clicked(bool)", self.onPostprocess)
        self.ui.detectButton.connect("clicked(bool)", self.onDetect)
        self.ui.findingsTableView.connect("selectionChanged()", self.onFindingSelected)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetune)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self._showProgress(False)
        self.refreshModels()
        self.updateButtons()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._job is not None:
            self._job.cancel()

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()

    def updateButtons(self, *_args) -> None:
        busy = self._job is not None
        self.ui.segmentButton.enabled = not busy and self.ui.inputVolumeSelector.currentNode() is not None
        self.ui.detectButton.enabled = self.ui.segmentButton.enabled and self.ui.detectorComboBox.count > 0
        for button in (
            self.ui.createPhantomButton,
            self.ui.checkDependenciesButton,
            self.ui.compareButton,
            self.ui.postprocessButton,
            self.ui.exportButton,
            self.ui.finetuneButton,
        ):
            button.enabled = not busy

    # ------------------------------------------------------------------ background work
    def runInBackground(self, work: Callable[..., Any], onDone: Callable[[Any], None], title: str) -> None:
        """Run ``work(progress=...)`` off the GUI thread; ``onDone(result)`` runs on the GUI thread after."""
        self._job = Job(work).start()
        self._onJobDone = onDone
        self.ui.statusLabel.text = title
        self._showProgress(True)
        self.updateButtons()
        self._timer.start()

    def _showProgress(self, visible: bool) -> None:
        self.ui.progressBar.visible = visible
        self.ui.cancelButton.visible = visible
        self.ui.progressBar.value = 0

    def _pollJob(self) -> None:
        job = self._job
        info = job.latest
        self.ui.progressBar.value = int(round(info.fraction * 100))
        self.ui.statusLabel.text = str(info).strip()
        if not job.done:
            return
        self._timer.stop()
        self._job = None
        self._showProgress(False)
        self.updateButtons()
        try:
            self._onJobDone(job.result())
        except CancelledError as error:
            self.ui.statusLabel.text = str(error)
        except CTDeepSegError as error:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(str(error))
        except Exception as error:  # a bug: show it, keep the session alive, keep the traceback in the log
            logging.exception("CTDeepSeg failed")
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"CTDeepSeg failed unexpectedly: {error}", detailedText=str(error))

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = "Cancelling..."

    # ------------------------------------------------------------------ actions
    def onCreatePhantom(self) -> None:
        modality = self.ui.phantomModalityComboBox.currentText
        seed = self.ui.phantomSeedSpinBox.value

        def show(phantom) -> None:
            volumeNode, _segmentationNode = self.logic.addPhantomToScene(phantom, f"Phantom {modality} {seed}")
            self.ui.inputVolumeSelector.setCurrentNode(volumeNode)
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
            self.ui.statusLabel.text = f"Phantom {seed} created with {len(phantom.lesions)} lesions."

        self.runInBackground(
            lambda progress: self.logic.makePhantom(seed=seed, modality=modality, progress=progress),
            show,
            "Creating phantom...",
        )

    def refreshModels(self) -> None:
        models = self.logic.availableModels()
        self._models = [card for card in models if card.get("task") == "segmentation"]
        self._detectors = [card for card in models if card.get("task") == "detection"]
        self.ui.modelComboBox.clear()
        for card in self._models:
            self.ui.modelComboBox.addItem(f"{card.name} {card['version']}")
        self.ui.detectorComboBox.clear()
        for card in self._detectors:
            self.ui.detectorComboBox.addItem(f"{card.name} {card['version']}")
        self.onModelChanged()

    def onModelChanged(self, *_args) -> None:
        index = self.ui.modelComboBox.currentIndex
        if not self._models or index < 0:
            self.ui.modelDescriptionLabel.text = (
                "No model found. Train one with `ctdeepseg train` or add a MONAI bundle."
            )
            return
        card = self._models[index]
        labels = ", ".join(label.name for label in card.labels)
        self.ui.modelDescriptionLabel.text = f"{card.get('description', '')}\nLabels: {labels}"

    def _readyInput(self, comboBox, what: str):
        """(input volume node, its engine volume) once a model is chosen and the dependencies are installed;
        None after telling the user what is missing."""
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        if volumeNode is None or comboBox.currentIndex < 0:
            slicer.util.errorDisplay(f"Choose an input volume and a {what} first.")
            return None
        try:
            self.logic.ensureDependencies(confirm=slicer.util.confirmOkCancelDisplay)
            return volumeNode, self.logic.volumeFromNode(volumeNode)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return None

    def onSegment(self) -> None:
        ready = self._readyInput(self.ui.modelComboBox, "model")
        if ready is None:
            return
        volumeNode, volume = ready
        folder = self._models[self.ui.modelComboBox.currentIndex].folder
        device = self.ui.deviceComboBox.currentText

        def show(result) -> None:
            segmentationNode = self.logic.addSegmentation(result, volumeNode)
            self.ui.evaluationSegmentationSelector.setCurrentNode(segmentationNode)
            self.ui.postprocessSegmentationSelector.setCurrentNode(segmentationNode)
            notes = " ".join(result.notes)
            self.ui.statusLabel.text = f"Segmented in {result.seconds:.1f} s on {result.device}. {notes}".strip()

        self.runInBackground(
            lambda progress: self.logic.segmentVolume(volume, folder, device, progress), show, "Segmenting..."
        )

    def onCompare(self) -> None:
        segmentationNode = self.ui.evaluationSegmentationSelector.currentNode()
        referenceNode = self.ui.referenceSegmentationSelector.currentNode()
        if segmentationNode is None or referenceNode is None:
            slicer.util.errorDisplay("Choose both a segmentation and a reference segmentation to compare.")
            return
        try:
            prediction, reference, names = self.logic.comparisonLabels(segmentationNode, referenceNode)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return

        def show(rows) -> None:
            table, chart = self.logic.showComparison(rows, f"{segmentationNode.GetName()} vs {referenceNode.GetName()}")
            self.ui.comparisonTableView.setMRMLTableNode(table)
            slicer.modules.plots.logic().ShowChartInLayout(chart)
            self.ui.statusLabel.text = f"Compared {len(rows)} segments."

        self.runInBackground(
            lambda progress: self.logic.compareLabels(prediction, reference, names, progress), show, "Measuring..."
        )

    def onPostprocess(self) -> None:
        segmentationNode = self.ui.postprocessSegmentationSelector.currentNode()
        if segmentationNode is None:
            slicer.util.errorDisplay("Choose a segmentation to clean up.")
            return
        plane = self.ui.fillHolesPlaneComboBox.currentIndex
        try:
            steps = self.logic.postprocessingSteps(
                fillHoles=self.ui.fillHolesCheckBox.checked,
                fillHolesPlane=None if plane == 0 else self.ui.fillHolesPlaneComboBox.currentText.lower(),
                minIslandMm3=self.ui.minIslandSpinBox.value or None,
                keepLargest=self.ui.keepLargestSpinBox.value or None,
                closingMm=self.ui.closingSpinBox.value or None,
                openingMm=self.ui.openingSpinBox.value or None,
            )
            labels = self.logic.segmentationToLabels(segmentationNode)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return
        inPlace = self.ui.inPlaceCheckBox.checked

        def apply(result) -> None:
            cleaned, changes = result
            target = self.logic.applyCleanedLabels(segmentationNode, cleaned, inPlace)
            self.ui.postprocessSegmentationSelector.setCurrentNode(target)
            lines = [str(change) for change in changes if change.voxels_added or change.voxels_removed]
            self.ui.statusLabel.text = f"Cleaned into '{target.GetName()}'.\n" + (
                "\n".join(lines) or "Nothing changed."
            )

        self.runInBackground(
            lambda progress: self.logic.postprocessLabels(labels, steps, progress), apply, "Cleaning up..."
        )

    def onDetect(self) -> None:
        ready = self._readyInput(self.ui.detectorComboBox, "detector")
        if ready is None:
            return
        volumeNode, volume = ready
        detector = self._detectors[self.ui.detectorComboBox.currentIndex].folder
        segmentLesions = self.ui.segmentLesionsCheckBox.checked
        segmenterIndex = self.ui.modelComboBox.currentIndex
        segmenter = self._models[segmenterIndex].folder if segmentLesions and segmenterIndex >= 0 else None
        threshold = self.ui.thresholdSpinBox.value
        device = self.ui.deviceComboBox.currentText

        def show(output) -> None:
            result, lesions = output
            rois, table, _segmentation = self.logic.addFindings(result, volumeNode, lesions)
            self._findingRois = rois
            self.ui.findingsTableView.setMRMLTableNode(table)
            self.ui.statusLabel.text = f"{len(rois)} finding(s) in {result.seconds:.1f} s on {result.device}."

        self.runInBackground(
            lambda progress: self.logic.detectVolume(
                volume, detector, device, threshold, segmentLesions, segmenter, progress
            ),
            show,
            "Detecting...",
        )

    def onFindingSelected(self) -> None:
        rows = self.ui.findingsTableView.selectionModel().selectedRows()
        rois = self._findingRois
        if not rows or rows[0].row() >= len(rois):
            return
        centre = [0.0, 0.0, 0.0]
        rois[rows[0].row()].GetCenterWorld(centre)
        slicer.modules.markups.logic().JumpSlicesToLocation(*centre, True)

    def onInputChanged(self, volumeNode) -> None:
        self.ui.caseNameLineEdit.text = self.logic.suggestCaseName(volumeNode) if volumeNode else ""

    def onExport(self) -> None:
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        segmentationNode = self.ui.exportSegmentationSelector.currentNode()
        datasetDir = self.ui.datasetPathLineEdit.currentPath
        if volumeNode is None or segmentationNode is None or not datasetDir:
            slicer.util.errorDisplay("Choose the input volume, the corrected segmentation and a dataset folder.")
            return
        try:
            inputs = self.logic.trainingPairInputs(volumeNode, segmentationNode, datasetDir)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return
        caseName = self.ui.caseNameLineEdit.text.strip() or None
        replace = self.ui.replaceCaseCheckBox.checked

        def show(result) -> None:
            changed = ", ".join(
                f"{name} Dice {change['dice']:.3f} vs the model" for name, change in result.changes.items()
            )
            self.ui.statusLabel.text = f"{result.message} {changed}".strip()

        self.runInBackground(
            lambda progress: self.logic.exportPair(datasetDir, inputs, caseName, replace), show, "Exporting..."
        )

    def onFinetune(self) -> None:
        datasetDir = self.ui.datasetPathLineEdit.currentPath
        index = self.ui.modelComboBox.currentIndex
        name = self.ui.finetuneNameLineEdit.text.strip()
        if not datasetDir or index < 0 or not name:
            slicer.util.errorDisplay("Choose a dataset folder, a model (Segmentation section) and a new model name.")
            return
        try:
            self.logic.ensureDependencies(confirm=slicer.util.confirmOkCancelDisplay)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return
        folder = self._models[index].folder
        epochs = self.ui.finetuneEpochsSpinBox.value
        device = self.ui.deviceComboBox.currentText
        self.ui.trainingCurveLabel.text = ""

        def show(card) -> None:
            self.refreshModels()
            before, after = card["validation"]["before"], card["validation"]["after"]
            self.ui.trainingCurveLabel.text = "Validation Dice before -> after: " + ", ".join(
                f"{label} {before[label]:.3f} -> {after.get(label, float('nan')):.3f}" for label in before
            )
            self.ui.statusLabel.text = f"Model {card.name} saved (curve: {card.folder / 'training_curve.png'})."

        self.runInBackground(
            lambda progress: self.logic.finetune(datasetDir, folder, name, epochs, device, progress=progress),
            show,
            "Fine-tuning...",
        )

    def onCheckDependencies(self) -> None:
        try:
            installed = self.logic.ensureDependencies(confirm=slicer.util.confirmOkCancelDisplay)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return
        self.ui.statusLabel.text = (
            f"Installed: {', '.join(installed)}." if installed else "All Python dependencies are installed."
        )


#
# CTDeepSegLogic
#


class CTDeepSegLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, callable from scripts: takes and returns MRML nodes, needs no GUI.

    Methods that take a ``progress`` argument accept a ``CTDeepSegLib.jobs.Progress`` (for a progress callback
    and cancellation); they block until done, so a script can simply call them. The panel runs the engine part
    on a worker thread and creates MRML nodes on the GUI thread, as MRML requires.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    # ------------------------------------------------------------------ Python dependencies
    @staticmethod
    def missingDependencies() -> list[Requirement]:
        return missing_requirements()

    def ensureDependencies(self, confirm: Callable[[str], bool] | None = None) -> list[str]:
        """Install missing Python packages after ``confirm(message)`` agrees; returns what was installed.

        torch comes from Slicer's PyTorch extension (which picks the build matching the GPU driver), the rest
        from pip; SimpleITK is Slicer's own and never reinstalled. Without consent nothing is installed and a
        ``CTDeepSegError`` says what is missing and how to install it later.
        """
        missing = self.missingDependencies()
        if not missing:
            return []
        names = ", ".join(requirement.module for requirement in missing)
        message = (
            f"CTDeepSeg needs these Python packages, which are not installed yet: {names}. Installing them "
            "downloads several hundred MB (PyTorch through the PyTorch extension) and may take a few minutes. "
            "Install now?"
        )
        if confirm is None or not confirm(message):
            raise CTDeepSegError(
                f"CTDeepSeg cannot run without {names}. Nothing was installed. To install later, press "
                "'Check dependencies' in the CTDeepSeg panel, or run in the Python console: "
                'slicer.util.getModuleLogic("CTDeepSeg").ensureDependencies(confirm=lambda message: True)'
            )
        self._installTorch([r for r in missing if r.installed_by == "PyTorch extension"])
        unowned = [r for r in missing if r.installed_by == "Slicer"]
        if unowned:
            raise CTDeepSegError(
                f"{', '.join(r.module for r in unowned)} should come with Slicer but is missing; reinstall Slicer."
            )
        specs = [r.pip_spec for r in missing if r.installed_by == "pip"]
        if specs:
            slicer.util.pip_install(" ".join(specs))
        still = [r.module for r in self.missingDependencies()]
        if still:
            raise CTDeepSegError(f"Installing {', '.join(still)} failed; see the Python console for pip's output.")
        return [requirement.module for requirement in missing]

    @staticmethod
    def _installTorch(requirements: Sequence[Requirement]) -> None:
        if not requirements:
            return
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise CTDeepSegError(
                "CTDeepSeg needs the PyTorch extension to install torch. Install 'PyTorch' from the Extensions "
                "Manager, restart Slicer, then try again."
            ) from None
        specs = {r.module: r.pip_spec[len(r.module) :] for r in requirements}
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False,
            torchVersionRequirement=specs.get("torch", ">=2.1"),
            torchvisionVersionRequirement=specs.get("torchvision", ">=0.16"),
        )
        if torch is None:
            raise CTDeepSegError("Installing PyTorch failed; see the PyTorch Utils module for details.")

    # ------------------------------------------------------------------ volumes and nodes
    @staticmethod
    def volumeFromNode(volumeNode):
        """The engine ``Volume`` (array, spacing, origin, direction in LPS) of a scalar volume node."""
        from CTDeepSegLib.mrml_bridge import volume_from_node

        return volume_from_node(volumeNode)

    @staticmethod
    def volumeToNode(volume, name: str, label: bool = False, node=None):
        """A scalar (or label-map) volume node holding the engine ``volume`` with its exact geometry."""
        from CTDeepSegLib.mrml_bridge import volume_to_node

        return volume_to_node(volume, name, label=label, node=node)

    def loadVolume(self, path: str, name: str | None = None, seriesUID: str | None = None):
        """Read a volume file or DICOM series folder with the engine's reader (clear errors) into a new node."""
        from pathlib import Path

        from CTDeepSegLib.volume_io import read_volume

        volume = read_volume(path, series_uid=seriesUID)
        return self.volumeToNode(volume, name or Path(path).name.split(".")[0])

    def saveVolume(self, volumeNode, path: str, overwrite: bool = False) -> None:
        """Write a volume node to NIfTI, NRRD or MHA atomically; never replaces a file unless ``overwrite``."""
        from CTDeepSegLib.volume_io import write_volume

        write_volume(self.volumeFromNode(volumeNode), path, overwrite=overwrite)

    @staticmethod
    def labelsToSegmentation(labels, referenceNode, names, name: str):
        """A segmentation node with one named, coloured segment per entry of ``names`` (value -> (name, RGB))."""
        from CTDeepSegLib.mrml_bridge import labels_to_segmentation

        return labels_to_segmentation(labels, names, referenceNode, name)

    @staticmethod
    def segmentationToLabels(segmentationNode, referenceNode=None, values=None):
        """The segmentation as one label ``Volume`` on the reference volume's grid."""
        from CTDeepSegLib.mrml_bridge import segmentation_to_labels

        return segmentation_to_labels(segmentationNode, referenceNode, values)

    @staticmethod
    def boxesToRoiNodes(boxes, prefix: str = "Finding") -> list:
        """One markups ROI node per ``Box``, named with its rank, label and score."""
        from CTDeepSegLib.mrml_bridge import box_to_roi_node

        return [
            box_to_roi_node(box, f"{prefix} {rank}: {box.label} ({box.score:.2f})")
            for rank, box in enumerate(boxes, start=1)
        ]

    @staticmethod
    def roiNodeToBox(roiNode):
        """The oriented ``Box`` (LPS) of a markups ROI node, with its CTDeepSeg score when it has one."""
        from CTDeepSegLib.mrml_bridge import roi_node_to_box

        return roi_node_to_box(roiNode, score=float(roiNode.GetAttribute("CTDeepSeg.Score") or 1.0))

    @staticmethod
    def rowsToTable(rows, name: str):
        """A table node with one row per dictionary."""
        from CTDeepSegLib.mrml_bridge import table_from_rows

        return table_from_rows(rows, name)

    # ------------------------------------------------------------------ segmentation
    @staticmethod
    def availableModels() -> list:
        """Cards of every model found (shipped, user folder, MONAI bundles)."""
        from CTDeepSegLib.model_store import available_models

        return available_models()

    @staticmethod
    def segmentVolume(volume, model=None, device: str = "auto", progress: Progress | None = None, **options):
        """Engine part of segmentation (safe on a worker thread): returns a ``SegmentationResult``.

        ``model`` is a model name, a model or bundle folder, or None for the shipped CT model.
        """
        from CTDeepSegLib.inference import segment_volume
        from CTDeepSegLib.model_store import open_model

        progress = progress or Progress()
        progress.update(0.0, "Loading model")
        card, network = open_model(model, task="segmentation")
        return segment_volume(volume, card, network, device, progress=progress, **options)

    def addSegmentation(self, result, volumeNode, name: str | None = None):
        """A segmentation node for a ``SegmentationResult``: named, coloured segments with SNOMED-CT terminology,
        reference geometry from ``volumeNode``, placed in the same study folder."""
        from CTDeepSegLib.mrml_bridge import keep_original_prediction, place_beside, set_terminology

        card = result.card
        names = {label.value: (label.name, label.colour) for label in card.labels}
        node = self.labelsToSegmentation(
            result.labels, volumeNode, names, name or f"{volumeNode.GetName()} {card.name}"
        )
        set_terminology(node, {label.name: label.snomed for label in card.labels if label.snomed})
        place_beside(node, volumeNode)
        keep_original_prediction(node, self.modelRecord(card))
        return node

    @staticmethod
    def modelRecord(card) -> dict:
        """Name, version, weights SHA-256 and labels of a model: what a training pair's provenance records."""
        from CTDeepSegLib.model_store import model_record

        return {**model_record(card), "labels": {str(label.value): label.name for label in card.labels}}

    def segment(self, volumeNode, model=None, device: str = "auto", progress: Progress | None = None, **options):
        """Segment a volume node; returns a new segmentation node ready to edit (blocking; see ``segmentVolume``)."""
        result = self.segmentVolume(self.volumeFromNode(volumeNode), model, device, progress, **options)
        for note in result.notes:
            logging.warning(note)
        return self.addSegmentation(result, volumeNode)

    # ------------------------------------------------------------------ detection
    @staticmethod
    def detectVolume(
        volume,
        model=None,
        device: str = "auto",
        threshold: float | None = None,
        segmentLesions: bool = False,
        segmenter=None,
        progress: Progress | None = None,
    ):
        """Engine part of detection (safe on a worker thread): a ``DetectionResult``, and with ``segmentLesions``
        a label volume with finding n as value n (the segmenter run inside each box), else None."""
        from CTDeepSegLib.detect_segment import segment_findings
        from CTDeepSegLib.detector import detect_volume
        from CTDeepSegLib.model_store import open_model

        progress = progress or Progress()
        progress.update(0.0, "Loading detector")
        card, network = open_model(model or "ctdeepseg-phantom-detector", task="detection")
        result = detect_volume(volume, card, network, device, threshold, progress=progress.step(0.0, 0.6))
        lesions = None
        if segmentLesions and result.findings:
            segmenterCard, segmenterNetwork = open_model(segmenter, task="segmentation")
            lesions = segment_findings(
                volume, result.findings, segmenterCard, segmenterNetwork, device, progress=progress.step(0.6, 1.0)
            )
        return result, lesions

    @staticmethod
    def confidenceColour(score: float) -> tuple[float, float, float]:
        """Yellow for a finding at 0.5, red at 1.0: the more certain, the warmer."""
        t = min(max((float(score) - 0.5) / 0.5, 0.0), 1.0)
        return (1.0, 0.9 * (1.0 - t), 0.0)

    def addFindings(self, result, volumeNode, lesions=None, name: str | None = None):
        """One markups ROI per finding (named with rank and score, coloured by confidence), a table of findings
        and, when given, the lesion segments; all in the volume's study. Returns (ROI nodes, table, segmentation)."""
        from CTDeepSegLib.findings import findings_rows
        from CTDeepSegLib.mrml_bridge import place_beside

        name = name or f"{volumeNode.GetName()} findings"
        rois = self.boxesToRoiNodes(result.findings, prefix="Finding")
        for roi, box in zip(rois, result.findings, strict=True):
            roi.GetDisplayNode().SetSelectedColor(*self.confidenceColour(box.score))
            roi.GetDisplayNode().SetColor(*self.confidenceColour(box.score))
            roi.SetAttribute("CTDeepSeg.Score", f"{box.score:.4f}")
            place_beside(roi, volumeNode)
        rows = findings_rows(result.findings)
        for row, roi in zip(rows, rois, strict=True):
            row["roi"] = roi.GetID()
        table = self.rowsToTable(rows, name)
        place_beside(table, volumeNode)
        segmentation = None
        if lesions is not None:
            names = {
                number: (f"lesion {number} ({box.score:.2f})", self.confidenceColour(box.score))
                for number, box in enumerate(result.findings, start=1)
            }
            segmentation = self.labelsToSegmentation(lesions, volumeNode, names, f"{name} lesions")
            place_beside(segmentation, volumeNode)
        return rois, table, segmentation

    def detect(
        self,
        volumeNode,
        model=None,
        device: str = "auto",
        threshold: float | None = None,
        segmentLesions: bool = False,
        segmenter=None,
        progress: Progress | None = None,
    ):
        """Find lesions in a volume node: (ROI nodes, findings table node, lesion segmentation node or None)."""
        result, lesions = self.detectVolume(
            self.volumeFromNode(volumeNode), model, device, threshold, segmentLesions, segmenter, progress
        )
        for note in result.notes:
            logging.warning(note)
        return self.addFindings(result, volumeNode, lesions)

    # ------------------------------------------------------------------ training data
    @staticmethod
    def suggestCaseName(volumeNode) -> str:
        """A file-safe case name from the volume's name."""
        from CTDeepSegLib.training_data import suggest_case_name

        return suggest_case_name(volumeNode.GetName())

    @staticmethod
    def trainingPairInputs(volumeNode, segmentationNode, datasetDir: str, originalSegmentationNode=None) -> dict:
        """What an export needs, read from the scene (GUI thread): image, corrected labels with the dataset's (or
        the model's) label values, the model's original prediction and model record when known."""
        from CTDeepSegLib.mrml_bridge import original_prediction, segmentation_to_labels
        from CTDeepSegLib.training_data import dataset_labels

        original, model = original_prediction(segmentationNode)
        originalSegmentationNode = originalSegmentationNode or original
        names = dataset_labels(Path(datasetDir))
        if not names and model:
            names = {int(value): name for value, name in model["labels"].items()}
        segmentation = segmentationNode.GetSegmentation()
        segmentNames = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        if not names:
            names = dict(enumerate(segmentNames, start=1))
        unknown = [name for name in segmentNames if name not in names.values()]
        if unknown:
            raise CTDeepSegError(
                f"Segment(s) {', '.join(repr(n) for n in unknown)} are not labels of the dataset or model "
                f"({', '.join(names.values())}); rename or delete them before exporting."
            )
        values = {name: value for value, name in names.items()}
        image = CTDeepSegLogic.volumeFromNode(volumeNode)
        labels = segmentation_to_labels(segmentationNode, volumeNode, values, use_tags=False)
        originalLabels = None
        if originalSegmentationNode is not None:
            originalLabels = segmentation_to_labels(originalSegmentationNode, volumeNode, values, use_tags=False)
        return {
            "image": image,
            "labels": labels,
            "names": names,
            "original": originalLabels,
            "model": {key: value for key, value in (model or {}).items() if key != "labels"},
            "source": volumeNode.GetName(),
        }

    @staticmethod
    def exportPair(datasetDir: str, inputs: dict, caseName: str | None = None, replace: bool = False):
        """Engine part of the export (see ``CTDeepSegLib.training_data``); returns an ``ExportResult``."""
        from CTDeepSegLib.training_data import export_pair

        return export_pair(
            datasetDir,
            inputs["image"],
            inputs["labels"],
            inputs["names"],
            case=caseName,
            original=inputs["original"],
            model=inputs["model"],
            source=inputs["source"],
            replace=replace,
        )

    def exportTrainingPair(
        self,
        volumeNode,
        segmentationNode,
        datasetDir: str,
        caseName: str | None = None,
        replace: bool = False,
        originalSegmentationNode=None,
    ):
        """Add the volume and its corrected segmentation to a training dataset folder; returns an ``ExportResult``
        (case name, status exported / replaced / skipped, cases in the dataset, changes from the original)."""
        inputs = self.trainingPairInputs(volumeNode, segmentationNode, datasetDir, originalSegmentationNode)
        return self.exportPair(datasetDir, inputs, caseName or self.suggestCaseName(volumeNode), replace)

    @staticmethod
    def finetune(
        datasetDir: str,
        model=None,
        name: str = "finetuned",
        epochs: int = 10,
        device: str = "auto",
        resume: bool = False,
        progress: Progress | None = None,
        **recipe,
    ):
        """Fine-tune ``model`` (name or folder; default the shipped CT model) on an exported dataset into a new
        model ``name`` in the user's model folder (listed at once); returns its card. Safe on a worker thread."""
        from CTDeepSegLib.finetune import FinetuneRecipe, finetune

        return finetune(datasetDir, model, name, FinetuneRecipe(epochs=epochs, **recipe), device, resume, progress)

    # ------------------------------------------------------------------ evaluation
    @staticmethod
    def comparisonLabels(segmentationNode, referenceSegmentationNode, referenceVolumeNode=None):
        """Both segmentations as label volumes on one grid, segments matched by name (case-insensitive).

        Returns (prediction labels, reference labels, {value: name}); runs on the GUI thread (MRML access).
        """
        from CTDeepSegLib.mrml_bridge import reference_volume_node, segmentation_to_labels

        names: dict[str, str] = {}
        for node in (segmentationNode, referenceSegmentationNode):
            segmentation = node.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                name = segmentation.GetNthSegment(index).GetName()
                names.setdefault(name.lower(), name)
        values = {key: value for value, key in enumerate(names, start=1)}
        referenceVolumeNode = (
            referenceVolumeNode
            or reference_volume_node(referenceSegmentationNode)
            or reference_volume_node(segmentationNode)
        )

        def labelsOf(node):
            byName = {
                node.GetSegmentation().GetNthSegment(i).GetName(): values[
                    node.GetSegmentation().GetNthSegment(i).GetName().lower()
                ]
                for i in range(node.GetSegmentation().GetNumberOfSegments())
            }
            return segmentation_to_labels(node, referenceVolumeNode, byName, use_tags=False)

        labelNames = {value: names[key] for key, value in values.items()}
        return labelsOf(segmentationNode), labelsOf(referenceSegmentationNode), labelNames

    @staticmethod
    def compareLabels(prediction, reference, labelNames, progress: Progress | None = None) -> list[dict]:
        """Figures per label (engine only, safe on a worker thread); see ``CTDeepSegLib.metrics``."""
        from CTDeepSegLib.metrics import compare_labels

        progress = progress or Progress()
        progress.update(0.0, "Measuring")
        rows = [metrics.as_row() for metrics in compare_labels(prediction, reference, labelNames)]
        progress.update(1.0, "Measured")
        return rows

    def showComparison(self, rows: list[dict], name: str = "CTDeepSeg comparison"):
        """A table node with one row per segment and a bar chart of Dice per segment; returns both."""
        from CTDeepSegLib.metrics import SUMMARY_FIELDS

        columns = ("name", "status", *SUMMARY_FIELDS)
        table = self.rowsToTable([{column: row[column] for column in columns} for row in rows], name)
        scene = table.GetScene()
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} Dice")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
        series.SetLabelColumnName("name")
        series.SetYColumnName("dice")
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{name} chart")
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetTitle("Dice per segment")
        chart.SetYAxisTitle("Dice")
        return table, chart

    def compare(self, segmentationNode, referenceSegmentationNode, referenceVolumeNode=None, name: str | None = None):
        """Compare a segmentation with a reference segmentation, segment by segment (matched by name).

        Fills a table node (Dice, Jaccard, Hausdorff, HD95, surface distances in mm, volumes in mL,
        sensitivity, precision; empty cells where a figure is undefined) and a Dice bar chart; returns both.
        """
        prediction, reference, labelNames = self.comparisonLabels(
            segmentationNode, referenceSegmentationNode, referenceVolumeNode
        )
        rows = self.compareLabels(prediction, reference, labelNames)
        return self.showComparison(
            rows, name or f"{segmentationNode.GetName()} vs {referenceSegmentationNode.GetName()}"
        )

    # ------------------------------------------------------------------ post-processing
    @staticmethod
    def postprocessLabels(labels, steps, progress: Progress | None = None):
        """Engine part of post-processing (safe on a worker thread); returns (labels, changes)."""
        from CTDeepSegLib.postprocess import postprocess

        return postprocess(labels, steps, progress=progress)

    @staticmethod
    def postprocessingSteps(
        fillHoles: bool = False,
        fillHolesPlane: str | None = None,
        minIslandMm3: float | None = None,
        keepLargest: int | None = None,
        closingMm: float | None = None,
        openingMm: float | None = None,
    ) -> list[dict]:
        from CTDeepSegLib.postprocess import steps_from_options

        return steps_from_options(fillHoles, fillHolesPlane, minIslandMm3, keepLargest, closingMm, openingMm)

    @staticmethod
    def applyCleanedLabels(segmentationNode, cleaned, inPlace: bool = False):
        """Write cleaned labels back: into a copy named '<name> cleaned' (default, so nothing is lost) or in place."""
        from CTDeepSegLib.mrml_bridge import (
            copy_segmentation,
            reference_volume_node,
            segment_label_values,
            update_segments_from_labels,
        )

        target = (
            segmentationNode
            if inPlace
            else copy_segmentation(segmentationNode, f"{segmentationNode.GetName()} cleaned")
        )
        update_segments_from_labels(target, cleaned, segment_label_values(target), reference_volume_node(target))
        return target

    def postprocess(self, segmentationNode, inPlace: bool = False, progress: Progress | None = None, **options):
        """Clean a segmentation: ``fillHoles``, ``fillHolesPlane``, ``minIslandMm3``, ``keepLargest``,
        ``closingMm``, ``openingMm``. Works on a copy unless ``inPlace``; returns (segmentation node, changes),
        one change per step and segment with the voxels and mL added and removed.
        """
        from CTDeepSegLib.mrml_bridge import segment_label_values

        steps = self.postprocessingSteps(**options)
        labels = self.segmentationToLabels(segmentationNode)
        cleaned, changes = self.postprocessLabels(labels, steps, progress)
        target = self.applyCleanedLabels(segmentationNode, cleaned, inPlace)
        nameOf = {
            value: target.GetSegmentation().GetSegment(segmentId).GetName()
            for segmentId, value in segment_label_values(target).items()
        }
        return target, [dict(vars(change), segment=nameOf.get(change.label, "")) for change in changes]

    # ------------------------------------------------------------------ sample data
    @staticmethod
    def makePhantom(seed: int = 0, modality: str = "CT", progress: Progress | None = None, **options):
        """A synthetic phantom (engine objects only, safe on a worker thread); see ``CTDeepSegLib.phantom``."""
        from CTDeepSegLib.phantom import make_phantom

        progress = progress or Progress()
        progress.update(0.0, "Creating phantom")
        phantom = make_phantom(seed=seed, modality=modality, **options)
        progress.update(1.0, "Phantom created")
        return phantom

    def addPhantomToScene(self, phantom, name: str = "Phantom"):
        """Add a phantom's image and its true labels (as a segmentation) to the scene; returns both nodes."""
        from CTDeepSegLib.phantom import LABEL_COLOURS, LABELS

        volumeNode = self.volumeToNode(phantom.image, name)
        names = {value: (LABELS[value], LABEL_COLOURS[value]) for value in LABELS}
        segmentationNode = self.labelsToSegmentation(phantom.labels, volumeNode, names, f"{name} truth")
        return volumeNode, segmentationNode

    def createPhantom(self, seed: int = 0, modality: str = "CT", name: str | None = None, **options):
        """Make a phantom and add it to the scene (console convenience); returns (volume, segmentation, lesions)."""
        phantom = self.makePhantom(seed=seed, modality=modality, **options)
        volumeNode, segmentationNode = self.addPhantomToScene(phantom, name or f"Phantom {modality} {seed}")
        return volumeNode, segmentationNode, phantom.lesions


#
# CTDeepSegTest
#


class CTDeepSegTest(ScriptedLoadableModuleTest):
    """The self-test Slicer runs (Reload and Test, CTest); it drives the logic on real MRML nodes."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_PhantomThroughLogic()
        self.setUp()
        self.test_ObliqueVolumeRoundTrip()
        self.setUp()
        self.test_FindingsAsRoisAndTable()
        self.setUp()
        self.test_CompareAndPostprocess()
        self.setUp()
        self.test_SegmentPhantomWithShippedModel()
        self.setUp()
        self.test_ExportTrainingPair()
        self.setUp()
        self.test_DetectPhantomLesions()

    def test_PhantomThroughLogic(self) -> None:
        """A phantom's labels survive volume node -> segmentation node -> labels exactly."""
        import numpy as np

        from CTDeepSegLib.phantom import LABELS, make_phantom

        self.delayDisplay("Phantom through the logic")
        logic = CTDeepSegLogic()
        volumeNode, segmentationNode, lesions = logic.createPhantom(seed=11, shape=(24, 40, 40), spacing=(6, 6, 8))
        truth = make_phantom(seed=11, shape=(24, 40, 40), spacing=(6, 6, 8))
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), len(LABELS))
        self.assertEqual(
            sorted(segmentation.GetNthSegment(i).GetName() for i in range(len(LABELS))), sorted(LABELS.values())
        )
        labels = logic.segmentationToLabels(segmentationNode)
        np.testing.assert_array_equal(labels.array, truth.labels.array)
        self.assertIsNone(truth.image.geometry_mismatch(logic.volumeFromNode(volumeNode)))
        self.assertEqual(len(lesions), 4)
        self.delayDisplay("Test passed")

    def test_ObliqueVolumeRoundTrip(self) -> None:
        """An oblique, anisotropic volume keeps voxels and geometry exactly through a volume node."""
        import numpy as np

        from CTDeepSegLib.volume import Volume

        self.delayDisplay("Oblique volume round trip")
        angle = np.deg2rad(25.0)
        direction = np.array(
            [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
        ) @ np.diag([1.0, -1.0, -1.0])
        array = np.random.default_rng(3).normal(size=(7, 9, 11)).astype(np.float32)
        volume = Volume(array, spacing=(0.7, 1.3, 4.0), origin=(10.0, -20.0, 35.5), direction=direction)
        logic = CTDeepSegLogic()
        node = logic.volumeToNode(volume, "oblique")
        back = logic.volumeFromNode(node)
        np.testing.assert_array_equal(back.array, array)
        np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-9)
        np.testing.assert_allclose(back.origin, volume.origin, atol=1e-9)
        np.testing.assert_allclose(back.direction, volume.direction, atol=1e-9)
        self.delayDisplay("Test passed")

    def test_FindingsAsRoisAndTable(self) -> None:
        """Lesion boxes become ROI nodes with the right RAS centre and size; figures become a table."""
        import numpy as np

        self.delayDisplay("Findings as ROIs and a table")
        logic = CTDeepSegLogic()
        _volume, _segmentation, lesions = logic.createPhantom(seed=5, shape=(24, 40, 40), spacing=(6, 6, 8))
        rois = logic.boxesToRoiNodes([lesion.box for lesion in lesions])
        for lesion, roi in zip(lesions, rois, strict=True):
            centre = [0.0, 0.0, 0.0]
            roi.GetCenter(centre)
            lps = np.array(lesion.centre_lps_mm)
            np.testing.assert_allclose(centre, [-lps[0], -lps[1], lps[2]], atol=1e-6)
            np.testing.assert_allclose(roi.GetSize(), [2 * lesion.radius_mm] * 3, atol=1e-6)
        table = logic.rowsToTable(
            [{"organ": lesion.organ, "radius_mm": lesion.radius_mm} for lesion in lesions], "Lesions"
        )
        self.assertEqual(table.GetNumberOfRows(), len(lesions))
        self.assertEqual(table.GetNumberOfColumns(), 2)
        self.delayDisplay("Test passed")

    def test_CompareAndPostprocess(self) -> None:
        """Comparing a shifted liver gives the shift as Hausdorff distance; clean-up fills a hole in a copy."""
        import numpy as np

        from CTDeepSegLib.phantom import LABEL_COLOURS, LABELS

        self.delayDisplay("Compare and post-process")
        logic = CTDeepSegLogic()
        volumeNode, truthNode, _ = logic.createPhantom(seed=3, shape=(24, 40, 40), spacing=(6, 6, 8))
        labels = logic.segmentationToLabels(truthNode).array.copy()
        liver = labels == 2
        labels[liver] = 0
        labels[np.roll(liver, 1, axis=2) & (labels == 0)] = 2
        names = {value: (LABELS[value], LABEL_COLOURS[value]) for value in LABELS}
        imageVolume = logic.volumeFromNode(volumeNode)
        predictionNode = logic.labelsToSegmentation(imageVolume.with_array(labels), volumeNode, names, "prediction")

        table, chart = logic.compare(predictionNode, truthNode)
        self.assertEqual(table.GetNumberOfRows(), len(LABELS))
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 1)
        rows = {table.GetCellText(row, 0): row for row in range(table.GetNumberOfRows())}
        column = {table.GetColumnName(c): c for c in range(table.GetNumberOfColumns())}
        self.assertEqual(float(table.GetCellText(rows["lung"], column["dice"])), 1.0)
        self.assertAlmostEqual(float(table.GetCellText(rows["liver"], column["hd_mm"])), 6.0, places=6)

        hole = tuple(np.argwhere(labels == 2)[len(np.argwhere(labels == 2)) // 2])
        labels[hole] = 0
        logic.applyCleanedLabels(predictionNode, imageVolume.with_array(labels), inPlace=True)
        cleanedNode, changes = logic.postprocess(predictionNode, fillHoles=True)
        self.assertNotEqual(cleanedNode.GetID(), predictionNode.GetID())
        self.assertEqual(logic.segmentationToLabels(cleanedNode).array[hole], 2)
        self.assertEqual(logic.segmentationToLabels(predictionNode).array[hole], 0)
        liverChange = [change for change in changes if change["segment"] == "liver"][0]
        added = np.count_nonzero(logic.segmentationToLabels(cleanedNode).array == 2) - np.count_nonzero(labels == 2)
        self.assertEqual(liverChange["voxels_added"], added)
        self.assertGreaterEqual(added, 1)
        self.delayDisplay("Test passed")

    def test_SegmentPhantomWithShippedModel(self) -> None:
        """The default model segments a fresh phantom through the logic, checked by Dice against its truth."""
        self.delayDisplay("Segment a phantom with the shipped model")
        logic = CTDeepSegLogic()
        if logic.missingDependencies():
            self.skipTest("segmentation needs PyTorch and MONAI: install them from the module panel first")
        volumeNode, truthNode, _ = logic.createPhantom(
            seed=77, shape=(80, 96, 96), spacing=(3.0, 3.0, 3.5), lesion_radius_mm=(8.0, 12.0)
        )
        segmentationNode = logic.segment(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(
            [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())],
            ["lung", "liver", "spine", "lesion"],
        )
        table, _chart = logic.compare(segmentationNode, truthNode)
        rows = {table.GetCellText(row, 0): row for row in range(table.GetNumberOfRows())}
        column = {table.GetColumnName(c): c for c in range(table.GetNumberOfColumns())}
        dice = {name: float(table.GetCellText(row, column["dice"])) for name, row in rows.items()}
        self.assertGreaterEqual(dice["lung"], 0.95, dice)
        self.assertGreaterEqual(dice["liver"], 0.9, dice)
        self.assertGreaterEqual(dice["lesion"], 0.7, dice)
        self.delayDisplay(f"Test passed (Dice {dice})")

    def test_ExportTrainingPair(self) -> None:
        """A segmentation node exports as an image/label pair that reads back exactly; a repeat is skipped."""
        import tempfile

        import numpy as np

        from CTDeepSegLib.volume_io import read_label

        self.delayDisplay("Export a training pair")
        logic = CTDeepSegLogic()
        volumeNode, segmentationNode, _ = logic.createPhantom(seed=8, shape=(24, 40, 40), spacing=(6, 6, 8))
        with tempfile.TemporaryDirectory() as datasetDir:
            result = logic.exportTrainingPair(volumeNode, segmentationNode, datasetDir, caseName="phantom8")
            self.assertEqual((result.case, result.status, result.cases), ("phantom8", "exported", 1))
            exported = read_label(f"{datasetDir}/labelsTr/phantom8.nii.gz")
            expected = logic.segmentationToLabels(segmentationNode)
            np.testing.assert_array_equal(exported.array, expected.array)
            self.assertIsNone(logic.volumeFromNode(volumeNode).geometry_mismatch(exported))
            self.assertEqual(logic.exportTrainingPair(volumeNode, segmentationNode, datasetDir).status, "skipped")
        self.delayDisplay("Test passed")

    def test_DetectPhantomLesions(self) -> None:
        """The shipped detector finds a phantom's lesions through the logic: each true lesion has a finding
        whose centre lies inside it, shown as an ROI and a table row."""
        from CTDeepSegLib.froc import centre_inside

        self.delayDisplay("Detect phantom lesions")
        logic = CTDeepSegLogic()
        if logic.missingDependencies():
            self.skipTest("detection needs PyTorch: install it from the module panel first")
        volumeNode, _segmentationNode, lesions = logic.createPhantom(
            seed=12, shape=(96, 150, 150), spacing=(2.2, 2.2, 2.5), lesion_radius_mm=(8.0, 12.0)
        )
        rois, table, _ = logic.detect(volumeNode)
        self.assertEqual(table.GetNumberOfRows(), len(rois))
        found = [logic.roiNodeToBox(roi) for roi in rois]
        for lesion in lesions:
            self.assertTrue(any(centre_inside(box, lesion.box) for box in found), f"missed {lesion}")
        self.assertLessEqual(len(rois), len(lesions) + 2)
        self.delayDisplay("Test passed")
