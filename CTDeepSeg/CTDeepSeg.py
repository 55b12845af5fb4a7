"""CTDeepSeg: deep-learning segmentation and detection of CT and MRI in 3D Slicer (5.8 or newer).

Scripted-module layout as in Slicer's template: ``CTDeepSeg`` (module metadata), ``CTDeepSegParameterNode`` (the
panel's state, saved with the scene), ``CTDeepSegWidget`` (binds the ``.ui`` panel to the logic and nothing
more), ``CTDeepSegLogic`` (all the work, usable from the Python console with no GUI: ``CTDeepSeg.CTDeepSegLogic()``)
and ``CTDeepSegTest`` (the self-test).

The heavy lifting lives in ``CTDeepSegLib`` (plain Python); ``CTDeepSegLib.mrml_bridge`` converts between its
objects and MRML nodes. The panel runs every long step (``CTDeepSegLib.actions``) in a child Python process
(``CTDeepSegLib.background``), because Slicer's main thread holds Python's GIL and a worker thread would
barely run; the console and the self-test call the same steps directly and block. Nothing heavy is imported
here at file scope: torch and MONAI load in the child process, or on first use from the console.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from CTDeepSegLib.dependencies import Requirement, problem, unmet_requirements
from CTDeepSegLib.errors import CancelledError, CTDeepSegError, EngineError
from CTDeepSegLib.jobs import Progress
from CTDeepSegLib.slicer_support import MINIMUM_SLICER, unsupported_slicer

try:
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
except ImportError:  # Slicer before 5.4: the panel only says which Slicer it needs
    parameterNodeWrapper = None

MODULE_DIR = Path(__file__).resolve().parent
TERMINOLOGY_FILE = MODULE_DIR / "Resources" / "Terminology" / "SegmentationCategoryTypeModifier-CTDeepSeg.term.json"
DEVICES = ["auto", "cuda", "mps", "cpu"]
FILL_HOLES_PLANES = ["3D only", "Axial", "Coronal", "Sagittal"]

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
        oldest = ".".join(map(str, MINIMUM_SLICER))
        self.parent.helpText = (
            "Deep-learning segmentation and lesion detection for CT and MRI: segment, detect, measure, clean up, "
            "and turn corrected labels into training data. Long work runs in a separate Python process with "
            f"progress and cancel, so Slicer stays responsive. Needs 3D Slicer {oldest} or newer. The same "
            "features are available from the Python console through <code>CTDeepSeg.CTDeepSegLogic()</code> and "
            "from the <code>ctdeepseg</code> command line. The shipped models are demonstration models, not for "
            "clinical use."
        )
        self.parent.acknowledgementText = (
            "Built on 3D Slicer, MONAI, PyTorch, torchvision and SimpleITK. Test cases come from the "
            "pyradiomics project (BSD-3-Clause)."
        )


#
# CTDeepSegParameterNode
#


class _PanelState:
    """The panel's choices, kept in the module's parameter node so they are saved with the scene.

    ``model``, ``detector`` and ``datasetFolder`` are bound by the widget itself: the model lists are found at
    run time, and an empty dataset folder must stay empty (a path parameter would read back as ".")."""

    inputVolume: vtkMRMLScalarVolumeNode
    phantomModality: Annotated[str, Choice(["CT", "MRI"])] = "CT"
    phantomSeed: Annotated[int, WithinRange(0, 100000)] = 0
    model: str = ""
    device: Annotated[str, Choice(DEVICES)] = "auto"
    detector: str = ""
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    segmentLesions: bool = False
    findingsTable: vtkMRMLTableNode
    postprocessSegmentation: vtkMRMLSegmentationNode
    fillHoles: bool = False
    fillHolesPlane: Annotated[str, Choice(FILL_HOLES_PLANES)] = "3D only"
    minIslandMm3: Annotated[float, WithinRange(0.0, 1000000.0)] = 0.0
    keepLargest: Annotated[int, WithinRange(0, 100)] = 0
    closingMm: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    openingMm: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    inPlace: bool = False
    evaluationSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode
    comparisonTable: vtkMRMLTableNode
    exportSegmentation: vtkMRMLSegmentationNode
    datasetFolder: str = ""
    caseName: str = ""
    replaceCase: bool = False
    finetuneName: str = ""
    finetuneEpochs: Annotated[int, WithinRange(1, 1000)] = 10


CTDeepSegParameterNode = parameterNodeWrapper(_PanelState) if parameterNodeWrapper is not None else None


#
# CTDeepSegWidget
#


class CTDeepSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds the widgets of ``Resources/UI/CTDeepSeg.ui`` to ``CTDeepSegLogic`` and runs its long steps
    in a child process, polled from a timer."""

    def __init__(self, parent=None) -> None:
        # Attributes first: with no parent, the base class calls setup() from its __init__.
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._onJobDone: Callable[[Any], None] | None = None
        self._onJobFinished: Callable[[], None] | None = None
        self._timer = None
        self._models: list = []
        self._detectors: list = []
        self._downloads: dict[str, list] = {"segmentation": [], "detection": []}
        self._suggestedCaseName = ""
        self._interactiveModels: list = []
        self._clicks = None  # the engine session answering clicks (a child process that keeps the model loaded)
        self._clickTicket: int | None = None
        self._clickTarget = None
        self._clickAgain = False
        self._clickTimer = None
        self._promptHistory: list = []  # (markups node, packed segment before that prompt), newest last
        VTKObservationMixin.__init__(self)
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        message = unsupported_slicer(slicer.app.majorVersion, slicer.app.minorVersion)
        if message or CTDeepSegParameterNode is None:
            logging.warning(message)
            label = qt.QLabel(message)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTDeepSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTDeepSegLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self._pollJob)
        # A click on any cell selects its whole row, so the selection always names one finding.
        self.ui.findingsTableView.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.ui.findingsTableView.setSelectionMode(qt.QAbstractItemView.SingleSelection)

        self.ui.createPhantomButton.connect("clicked(bool)", self.onCreatePhantom)
        self.ui.checkDependenciesButton.connect("clicked(bool)", self.onCheckDependencies)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.detectorComboBox.connect("currentIndexChanged(int)", self.onDetectorChanged)
        self.ui.postprocessButton.connect("clicked(bool)", self.onPostprocess)
        self.ui.undoPostprocessButton.connect("clicked(bool)", self.onUndoPostprocess)
        self.ui.detectButton.connect("clicked(bool)", self.onDetect)
        self.ui.findingsTableView.connect("selectionChanged()", self.onFindingSelected)
        self.ui.datasetPathLineEdit.connect("currentPathChanged(QString)", self.onDatasetFolderChanged)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetune)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self._clickTimer = qt.QTimer()
        self._clickTimer.setInterval(30)
        self._clickTimer.connect("timeout()", self._pollClick)
        self.ui.newSegmentButton.connect("clicked(bool)", self.onNewSegment)
        self.ui.undoPromptButton.connect("clicked(bool)", self.onUndoPrompt)
        self.ui.acceptButton.connect("clicked(bool)", self.onAcceptPrompts)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._showProgress(False)
        self.refreshModels()
        self.initializeParameterNode()
        self._setupPrompts()

    def cleanup(self) -> None:
        """Module reload or application exit: stop polling, stop the child processes, forget the parameter node."""
        for timer in (self._timer, self._clickTimer):
            if timer is not None:
                timer.stop()
        self._discardJob()
        self._closeClicks()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk_modified_event(), self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        # Results of work still running would land in the next scene: stop it and keep nothing.
        self._discardJob()
        self._closeClicks()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self._setupPrompts()
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        parameters = self._parameterNode
        if not parameters.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                parameters.inputVolume = firstVolume
        if not parameters.model and self._models:
            parameters.model = self._models[0].name
        if not parameters.detector and self._detectors:
            parameters.detector = self._detectors[0].name

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk_modified_event(), self.updateGUIFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode is not None:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk_modified_event(), self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        """What ``connectGui`` does not bind: the model lists, the dataset folder, the tables, the buttons."""
        parameters = self._parameterNode
        if parameters is None:
            return
        for comboBox, cards, name in (
            (self.ui.modelComboBox, self._models, parameters.model),
            (self.ui.detectorComboBox, self._detectors, parameters.detector),
        ):
            index = next((i for i, card in enumerate(cards) if card.name == name), -1)
            if index >= 0 and comboBox.currentIndex != index:
                comboBox.currentIndex = index
        if self.ui.datasetPathLineEdit.currentPath != parameters.datasetFolder:
            self.ui.datasetPathLineEdit.currentPath = parameters.datasetFolder
        for view, table in (
            (self.ui.findingsTableView, parameters.findingsTable),
            (self.ui.comparisonTableView, parameters.comparisonTable),
        ):
            if view.mrmlTableNode() is not table:
                view.setMRMLTableNode(table)
        self.updateButtons()

    def updateButtons(self) -> None:
        parameters = self._parameterNode
        busy = self._job is not None
        hasInput = parameters is not None and parameters.inputVolume is not None
        self.ui.segmentButton.enabled = not busy and hasInput and bool(self._models)
        self.ui.detectButton.enabled = not busy and hasInput and bool(self._detectors)
        for button in (
            self.ui.createPhantomButton,
            self.ui.checkDependenciesButton,
            self.ui.compareButton,
            self.ui.postprocessButton,
            self.ui.exportButton,
            self.ui.finetuneButton,
        ):
            button.enabled = not busy
        cleaned = parameters.postprocessSegmentation if parameters is not None else None
        self.ui.undoPostprocessButton.enabled = not busy and self.logic.canUndoPostprocess(cleaned)

    # ------------------------------------------------------------------ work in a child process
    def runInBackground(
        self,
        title: str,
        action: str,
        args: Sequence = (),
        kwargs: dict | None = None,
        onDone: Callable[[Any], None] | None = None,
        onFinished: Callable[[], None] | None = None,
        cancellable: bool = True,
    ) -> None:
        """Run ``CTDeepSegLib.actions.<action>`` in a child process; ``onDone(result)`` runs here when it succeeds,
        ``onFinished()`` after it ends in any way."""
        try:
            self._job = self.logic.startEngine(action, *args, **(kwargs or {}))
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return
        self._onJobDone = onDone
        self._onJobFinished = onFinished
        self.ui.statusLabel.text = title
        self._showProgress(True)
        self.ui.cancelButton.visible = cancellable
        self.updateButtons()
        self._timer.start()

    def _showProgress(self, visible: bool) -> None:
        self.ui.progressBar.visible = visible
        self.ui.cancelButton.visible = visible
        self.ui.cancelButton.enabled = True
        self.ui.progressBar.value = 0

    def _pollJob(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        info = job.poll()
        self.ui.progressBar.value = int(round(info.fraction * 100))
        self.ui.statusLabel.text = str(info).strip()
        if not job.done:
            return
        self._timer.stop()
        self._job = None
        self._showProgress(False)
        onDone, onFinished = self._onJobDone, self._onJobFinished
        try:
            result = job.result()
            if onDone is not None:
                onDone(result)
        except CancelledError as error:
            self.ui.statusLabel.text = str(error)
        except EngineError as error:
            logging.error(f"{error}\n{error.detail}")
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(str(error), detailedText=error.detail)
        except CTDeepSegError as error:
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(str(error))
        except Exception as error:  # a bug here: show it, keep the session alive, keep the traceback in the log
            logging.exception("CTDeepSeg failed")
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"CTDeepSeg failed unexpectedly: {error}", detailedText=traceback.format_exc())
        finally:
            if onFinished is not None:
                onFinished()
            self.updateButtons()

    def _discardJob(self) -> None:
        if self._job is not None:
            self._job.discard()
            self._job = None
            if self._timer is not None:
                self._timer.stop()
            self._showProgress(False)
            self.ui.statusLabel.text = "Stopped; nothing was kept."

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.cancelButton.enabled = False
            self.ui.statusLabel.text = "Cancelling..."

    def _stillInScene(self, *nodes) -> bool:
        """Whether the nodes a result belongs to are still there (the user may delete them while work runs)."""
        if all(node is not None and slicer.mrmlScene.IsNodePresent(node) for node in nodes):
            return True
        self.ui.statusLabel.text = "An input was removed from the scene while the work ran; the result was discarded."
        return False

    def _ensureDependencies(self, includeOptional: bool = False, formats: Sequence[str] = ()) -> list[str] | None:
        """What was installed after asking (the dialog's details list each package); None after saying why not."""

        def confirm(message: str) -> bool:
            details = self.logic.dependencyDetails(includeOptional, formats)
            return slicer.util.confirmOkCancelDisplay(
                message, "CTDeepSeg: install Python packages", detailedText=details
            )

        try:
            return self.logic.ensureDependencies(confirm=confirm, includeOptional=includeOptional, formats=formats)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return None

    def _inferenceInput(self, volumeNode, formats: Sequence[str] = ()):
        """The engine volume of ``volumeNode`` once PyTorch and MONAI (and what models of ``formats`` need) are
        there; None after saying what is wrong."""
        if self._ensureDependencies(formats=formats) is None:
            return None
        try:
            return self.logic.volumeFromNode(volumeNode)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return None

    # ------------------------------------------------------------------ actions
    def onCreatePhantom(self) -> None:
        modality, seed = self._parameterNode.phantomModality, self._parameterNode.phantomSeed

        def show(phantom) -> None:
            volumeNode, _segmentationNode = self.logic.addPhantomToScene(phantom, f"Phantom {modality} {seed}")
            self._parameterNode.inputVolume = volumeNode
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
            self.ui.statusLabel.text = f"Phantom {seed} created with {len(phantom.lesions)} lesions."

        self.runInBackground(
            "Creating phantom...", "make_phantom", kwargs={"seed": seed, "modality": modality}, onDone=show
        )

    def refreshModels(self) -> None:
        models = self.logic.availableModels()
        self._models = [card for card in models if card.get("task") == "segmentation"]
        self._detectors = [card for card in models if card.get("task") == "detection"]
        self._interactiveModels = [card for card in models if card.get("task") == "interactive"]
        self._downloads = {
            task: self.logic.downloadableModels(task) for task in ("segmentation", "detection")
        }  # catalogue models not installed yet: listed after the installed ones, fetched when chosen
        combos = (
            (self.ui.modelComboBox, self._models, self._downloads["segmentation"]),
            (self.ui.detectorComboBox, self._detectors, self._downloads["detection"]),
        )
        for comboBox, cards, downloads in combos:
            wasBlocked = comboBox.blockSignals(True)
            comboBox.clear()
            for card in cards:
                comboBox.addItem(f"{card.name} {card['version']}")
            for entry in downloads:
                comboBox.addItem(self.logic.downloadLabel(entry))
            comboBox.blockSignals(wasBlocked)
        self.updateGUIFromParameterNode()
        self._describeModel()

    def onModelChanged(self, index: int) -> None:
        if index >= len(self._models):
            self._offerDownload(self._downloads["segmentation"][index - len(self._models)])
            return
        if self._parameterNode is not None and 0 <= index < len(self._models):
            self._parameterNode.model = self._models[index].name
        self._describeModel()

    def onDetectorChanged(self, index: int) -> None:
        if index >= len(self._detectors):
            self._offerDownload(self._downloads["detection"][index - len(self._detectors)])
            return
        if self._parameterNode is not None and 0 <= index < len(self._detectors):
            self._parameterNode.detector = self._detectors[index].name

    def _offerDownload(self, entry: dict, source: str | None = None) -> None:
        """Ask before fetching a catalogue model (its licence first), then install it in the background with
        progress and Cancel; the chooser goes back to the model in use meanwhile."""
        combos = (self.ui.modelComboBox, self.ui.detectorComboBox)
        blocked = [comboBox.blockSignals(True) for comboBox in combos]
        self.updateGUIFromParameterNode()  # the chooser shows the model in use until the new one is installed
        for comboBox, wasBlocked in zip(combos, blocked):
            comboBox.blockSignals(wasBlocked)
        if self._job is not None:
            slicer.util.errorDisplay("Wait for the running task to finish (or cancel it) before adding a model.")
            return
        notice = self.logic.downloadNotice(entry, source)
        if not slicer.util.confirmOkCancelDisplay(notice, "CTDeepSeg: add a model", detailedText=entry["description"]):
            return

        def installed(folder) -> None:
            self.refreshModels()
            parameters = self._parameterNode
            if parameters is not None:
                if entry["task"] == "detection":
                    parameters.detector = self._chosenName(self._detectors, folder)
                else:
                    parameters.model = self._chosenName(self._models, folder)
            self.ui.statusLabel.text = f"{entry['name']} installed in {folder}."

        self.runInBackground(
            f"Adding {entry['name']}...",
            "pull_model",
            kwargs={"spec": entry["name"], "source": source, "accept_licence": True},
            onDone=installed,
        )

    @staticmethod
    def _chosenName(cards: list, folder) -> str:
        return next((card.name for card in cards if str(card.folder) == str(folder)), "")

    def onImportModel(self) -> None:
        """Add a model from a file: a catalogue zip downloaded elsewhere (air-gapped sites, verified as a
        download), an ONNX file with its card, or an nnU-Net v2 results folder (chosen by its plans.json)."""
        import qt

        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(),
            "Import a model",
            "",
            "Models (*.zip *.onnx plans.json);;Model archives (*.zip);;ONNX models (*.onnx);;"
            "nnU-Net results (plans.json)",
        )
        if not path:
            return
        if not path.endswith((".onnx", "plans.json")):
            try:
                entry = self.logic.catalogueEntryForFile(path)
            except CTDeepSegError as error:
                slicer.util.errorDisplay(str(error))
                return
            self._offerDownload(entry, source=path)
            return
        cardFile = None
        if path.endswith(".onnx"):
            cardFile = qt.QFileDialog.getOpenFileName(
                slicer.util.mainWindow(),
                "The ONNX model's card: its preprocessing and labels (see the README)",
                "",
                "Model cards (*.json)",
            )
            if not cardFile:
                return
        source = path if cardFile else str(Path(path).parent)
        if self._job is not None:
            slicer.util.errorDisplay("Wait for the running task to finish (or cancel it) before adding a model.")
            return
        from CTDeepSegLib.formats.nnunet import NNUNET_CLASS
        from CTDeepSegLib.formats.onnx_model import ONNX_CLASS

        if self._ensureDependencies(formats=[ONNX_CLASS if cardFile else NNUNET_CLASS]) is None:
            return

        def imported(folder) -> None:
            self.refreshModels()
            if self._parameterNode is not None:
                self._parameterNode.model = self._chosenName(self._models, folder)
            self.ui.statusLabel.text = f"Model imported into {folder}."

        self.runInBackground(
            "Importing a model...", "import_model", kwargs={"source": source, "card_file": cardFile}, onDone=imported
        )

    def _describeModel(self) -> None:
        index = self.ui.modelComboBox.currentIndex
        if not self._models or index < 0:
            self.ui.modelDescriptionLabel.text = (
                "No model found. Train one with `ctdeepseg train` or add a MONAI bundle."
            )
            return
        card = self._models[index]
        labels = ", ".join(label.name for label in card.labels)
        self.ui.modelDescriptionLabel.text = f"{card.get('description', '')}\nLabels: {labels}"

    def _chosen(self, cards: list, name: str):
        return next((card for card in cards if card.name == name), None)

    def onSegment(self) -> None:
        parameters = self._parameterNode
        volumeNode, card = parameters.inputVolume, self._chosen(self._models, parameters.model)
        if volumeNode is None or card is None:
            slicer.util.errorDisplay("Choose an input volume and a model first.")
            return
        volume = self._inferenceInput(volumeNode, formats=[card.get("network", {}).get("class", "")])
        if volume is None:
            return

        def show(result) -> None:
            if not self._stillInScene(volumeNode):
                return
            segmentationNode = self.logic.addSegmentation(result, volumeNode)
            parameters.evaluationSegmentation = segmentationNode
            parameters.postprocessSegmentation = segmentationNode
            parameters.exportSegmentation = segmentationNode
            notes = " ".join(result.notes)
            unsure = [f"{name} {value:.2f}" for name, value in result.confidence.items() if value < 0.8]
            confidence = f"Low confidence: {', '.join(unsure)}." if unsure else ""
            self.ui.statusLabel.text = (
                f"Segmented in {result.seconds:.1f} s on {result.device}. {notes} {confidence}".strip()
            )

        kwargs = {"model": str(card.folder), "device": parameters.device}
        self.runInBackground("Segmenting...", "segment", (volume,), kwargs, onDone=show)

    def onCompare(self) -> None:
        parameters = self._parameterNode
        segmentationNode, referenceNode = parameters.evaluationSegmentation, parameters.referenceSegmentation
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
            parameters.comparisonTable = table
            slicer.modules.plots.logic().ShowChartInLayout(chart)
            self.ui.statusLabel.text = f"Compared {len(rows)} segments."

        self.runInBackground("Measuring...", "compare", (prediction, reference, names), onDone=show)

    def onPostprocess(self) -> None:
        parameters = self._parameterNode
        segmentationNode = parameters.postprocessSegmentation
        if segmentationNode is None:
            slicer.util.errorDisplay("Choose a segmentation to clean up.")
            return
        plane = parameters.fillHolesPlane
        try:
            steps = self.logic.postprocessingSteps(
                fillHoles=parameters.fillHoles,
                fillHolesPlane=None if plane == FILL_HOLES_PLANES[0] else plane.lower(),
                minIslandMm3=parameters.minIslandMm3 or None,
                keepLargest=parameters.keepLargest or None,
                closingMm=parameters.closingMm or None,
                openingMm=parameters.openingMm or None,
            )
            labels = self.logic.segmentationToLabels(segmentationNode)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return
        inPlace = parameters.inPlace

        def apply(result) -> None:
            if not self._stillInScene(segmentationNode):
                return
            cleaned, changes = result
            target = self.logic.applyCleanedLabels(segmentationNode, cleaned, inPlace)
            parameters.postprocessSegmentation = target
            lines = [str(change) for change in changes if change.voxels_added or change.voxels_removed]
            undo = " (Undo restores it)" if inPlace else ""
            self.ui.statusLabel.text = f"Cleaned into '{target.GetName()}'{undo}.\n" + (
                "\n".join(lines) or "Nothing changed."
            )

        self.runInBackground("Cleaning up...", "postprocess", (labels, steps), onDone=apply)

    def onUndoPostprocess(self) -> None:
        segmentationNode = self._parameterNode.postprocessSegmentation
        if self.logic.undoPostprocess(segmentationNode):
            self.ui.statusLabel.text = f"Restored '{segmentationNode.GetName()}' as it was before the clean-up."
        self.updateButtons()

    def onDetect(self) -> None:
        parameters = self._parameterNode
        volumeNode, detector = parameters.inputVolume, self._chosen(self._detectors, parameters.detector)
        if volumeNode is None or detector is None:
            slicer.util.errorDisplay("Choose an input volume and a detector first.")
            return
        if parameters.segmentLesions and not self._interactiveModels:
            slicer.util.errorDisplay("Segmenting each lesion needs an interactive model; none was found.")
            return
        volume = self._inferenceInput(volumeNode)
        if volume is None:
            return

        def show(output) -> None:
            if not self._stillInScene(volumeNode):
                return
            result, lesions = output
            rois, table, _segmentation = self.logic.addFindings(result, volumeNode, lesions)
            parameters.findingsTable = table
            self.ui.statusLabel.text = f"{len(rois)} finding(s) in {result.seconds:.1f} s on {result.device}."

        kwargs = {
            "model": str(detector.folder),
            "device": parameters.device,
            "threshold": parameters.threshold,
            "segment_lesions": parameters.segmentLesions,
            "segmenter": str(self._interactiveModels[0].folder) if parameters.segmentLesions else None,
        }
        self.runInBackground("Detecting...", "detect", (volume,), kwargs, onDone=show)

    def onFindingSelected(self) -> None:
        """A click on any cell of a finding's row centres the slice views on it (the view may be sorted)."""
        selection = self.ui.findingsTableView.selectionModel()
        indexes = selection.selectedIndexes() if selection is not None else []
        if not indexes:
            return
        row = self.ui.findingsTableView.sortFilterProxyModel().mapToSource(indexes[0]).row()
        roi = self.logic.findingRoi(self.ui.findingsTableView.mrmlTableNode(), row)
        if roi is not None:
            centre = [0.0, 0.0, 0.0]
            roi.GetCenterWorld(centre)
            slicer.modules.markups.logic().JumpSlicesToLocation(*centre, True)

    def onInputChanged(self, volumeNode) -> None:
        """Suggest a case name from the volume's, unless the user typed one of their own."""
        parameters = self._parameterNode
        if parameters is not None:
            suggestion = self.logic.suggestCaseName(volumeNode) if volumeNode else ""
            if not parameters.caseName or parameters.caseName == self._suggestedCaseName:
                parameters.caseName = suggestion
            self._suggestedCaseName = suggestion
        self.updateButtons()

    def onDatasetFolderChanged(self, path: str) -> None:
        if self._parameterNode is not None and self._parameterNode.datasetFolder != path:
            self._parameterNode.datasetFolder = path

    def onExport(self) -> None:
        parameters = self._parameterNode
        volumeNode, segmentationNode = parameters.inputVolume, parameters.exportSegmentation
        datasetDir = parameters.datasetFolder
        if volumeNode is None or segmentationNode is None or not datasetDir:
            slicer.util.errorDisplay("Choose the input volume, the corrected segmentation and a dataset folder.")
            return
        try:
            inputs = self.logic.trainingPairInputs(volumeNode, segmentationNode, datasetDir)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return
        kwargs = {**inputs, "case": parameters.caseName.strip() or None, "replace": parameters.replaceCase}

        def show(result) -> None:
            changed = ", ".join(
                f"{name} Dice {change['dice']:.3f} vs the model" for name, change in result.changes.items()
            )
            self.ui.statusLabel.text = f"{result.message} {changed}".strip()

        self.runInBackground("Exporting...", "export_pair", (datasetDir,), kwargs, onDone=show, cancellable=False)

    def onFinetune(self) -> None:
        parameters = self._parameterNode
        card, name = self._chosen(self._models, parameters.model), parameters.finetuneName.strip()
        if not parameters.datasetFolder or card is None or not name:
            slicer.util.errorDisplay("Choose a dataset folder, a model (Segmentation section) and a new model name.")
            return
        resume = self._askAboutInterruptedRun(name)
        if resume is None or self._ensureDependencies() is None:
            return
        self.ui.trainingCurveLabel.text = ""

        def show(newCard) -> None:
            before, after = newCard["validation"]["before"], newCard["validation"]["after"]
            self.ui.trainingCurveLabel.text = "Validation Dice before -> after: " + ", ".join(
                f"{label} {before[label]:.3f} -> {after.get(label, float('nan')):.3f}" for label in before
            )
            self.ui.statusLabel.text = f"Model {newCard.name} saved in {newCard.folder}."

        kwargs = {"model": str(card.folder), "name": name, "epochs": parameters.finetuneEpochs}
        kwargs.update(device=parameters.device, resume=resume)
        self.runInBackground(
            "Fine-tuning...",
            "finetune",
            (parameters.datasetFolder,),
            kwargs,
            onDone=show,
            onFinished=self.refreshModels,
        )

    def _askAboutInterruptedRun(self, name: str) -> bool | None:
        """False: start afresh; True: resume the interrupted run of this name; None: the user cancelled."""
        import qt

        state = self.logic.interruptedFinetune(name)
        if state is None:
            return False
        where = f" after epoch {state['epoch']} of {state['epochs']}" if state.get("epoch") is not None else ""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("CTDeepSeg: interrupted fine-tune")
        box.setText(f"A fine-tune into '{name}' was interrupted{where}. Resume it, or discard it and start again?")
        resumeButton = box.addButton("Resume", qt.QMessageBox.AcceptRole)
        discardButton = box.addButton("Discard and restart", qt.QMessageBox.DestructiveRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.exec_()
        if box.clickedButton() == resumeButton:
            return True
        if box.clickedButton() == discardButton:
            self.logic.discardInterruptedFinetune(name)
            return False
        return None

    # ------------------------------------------------------------------ interactive segmentation
    def _setupPrompts(self) -> None:
        """Give the place widgets the prompt markups nodes and watch them: each placed or moved prompt updates the
        segment (the nodes are made anew after a scene is closed)."""
        self._promptNodes = self.logic.promptNodes()
        self._promptHistory = []
        for widget, node in zip(
            (self.ui.includePlaceWidget, self.ui.excludePlaceWidget, self.ui.boxPlaceWidget), self._promptNodes
        ):
            widget.setCurrentNode(node)
            widget.buttonsVisible = True
            widget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
            for event in (node.PointPositionDefinedEvent, node.PointEndInteractionEvent):
                self.addObserver(node, event, self.onPromptPlaced)

    def onPromptPlaced(self, node, event) -> None:
        segmentationNode = self.ui.interactiveSegmentSelector.currentNode()
        segmentId = self.ui.interactiveSegmentSelector.currentSegmentID()
        volumeNode = self._parameterNode.inputVolume if self._parameterNode is not None else None
        if volumeNode is None or segmentationNode is None or not segmentId:
            self.ui.interactiveStatusLabel.text = "Choose the input volume and a segment (or press New segment) first."
            return
        if event == node.PointPositionDefinedEvent:
            from CTDeepSegLib.label_archive import pack_labels

            before = pack_labels(self.logic.segmentMask(segmentationNode, segmentId, volumeNode))
            self._promptHistory.append((node, before))
        self._requestClick(volumeNode, segmentationNode, segmentId)

    def _requestClick(self, volumeNode, segmentationNode, segmentId) -> None:
        """Send the current prompts to the click session; while one is answered, the next waits (coalesced)."""
        if self._clickTicket is not None:
            self._clickAgain = True
            return
        if not self._interactiveModels:
            self.ui.interactiveStatusLabel.text = (
                "No interactive model found; train one with `ctdeepseg train-interactive`."
            )
            return
        prompts = self.logic.promptsFromNodes(*self._promptNodes)
        if not prompts.include and prompts.box is None:
            return
        if self._ensureDependencies() is None:
            return
        from CTDeepSegLib.background.session import EngineSession

        try:
            volume = self.logic.volumeFromNode(volumeNode)
            volume.require_finite("input volume")
            previous = self.logic.segmentMask(segmentationNode, segmentId, volumeNode)
        except CTDeepSegError as error:
            slicer.util.errorDisplay(str(error))
            return
        self._clicks = self._clicks or EngineSession()
        self._clickTicket = self._clicks.submit(
            "click",
            volume,
            prompts,
            model=str(self._interactiveModels[0].folder),
            device=self._parameterNode.device,
            previous=previous if previous.array.any() else None,
        )
        self._clickTarget = (segmentationNode, segmentId)
        self.ui.interactiveStatusLabel.text = "Segmenting..."
        self._clickTimer.start()

    def _pollClick(self) -> None:
        if self._clickTicket is None or not self._clicks.ready(self._clickTicket):
            return
        self._clickTimer.stop()
        ticket, (segmentationNode, segmentId) = self._clickTicket, self._clickTarget
        self._clickTicket = None
        try:
            result = self._clicks.result(ticket)
        except EngineError as error:
            logging.error(f"{error}\n{error.detail}")
            slicer.util.errorDisplay(str(error), detailedText=error.detail)
            return
        except CTDeepSegError as error:
            self.ui.interactiveStatusLabel.text = str(error)
            return
        if not self._stillInScene(segmentationNode):
            return
        self.logic.setSegmentMask(segmentationNode, segmentId, result.mask)
        cubes = ", ".join(f"{spacing:.2f}" for spacing in result.spacings)
        notes = " ".join(result.notes)
        self.ui.interactiveStatusLabel.text = (
            f"Updated in {result.seconds:.2f} s on {result.device} (cube {cubes} mm). {notes}"
        )
        if self._clickAgain:
            self._clickAgain = False
            volumeNode = self._parameterNode.inputVolume
            if volumeNode is not None:
                self._requestClick(volumeNode, segmentationNode, segmentId)

    def _closeClicks(self) -> None:
        if self._clicks is not None:
            self._clicks.close()
        self._clicks, self._clickTicket, self._clickAgain = None, None, False

    def onNewSegment(self) -> None:
        volumeNode = self._parameterNode.inputVolume if self._parameterNode is not None else None
        segmentationNode = self.ui.interactiveSegmentSelector.currentNode()
        if volumeNode is None and segmentationNode is None:
            slicer.util.errorDisplay("Choose an input volume first.")
            return
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{volumeNode.GetName()} objects"
            )
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        segmentId = segmentation.AddEmptySegment("", f"object {segmentation.GetNumberOfSegments() + 1}")
        self.ui.interactiveSegmentSelector.setCurrentNode(segmentationNode)
        self.ui.interactiveSegmentSelector.setCurrentSegmentID(segmentId)

    def onUndoPrompt(self) -> None:
        """Take back the last placed prompt and restore the segment as it was before it."""
        if not self._promptHistory:
            return
        from CTDeepSegLib.label_archive import unpack_labels

        node, before = self._promptHistory.pop()
        segmentationNode = self.ui.interactiveSegmentSelector.currentNode()
        segmentId = self.ui.interactiveSegmentSelector.currentSegmentID()
        if node.GetNumberOfControlPoints():
            node.RemoveNthControlPoint(node.GetNumberOfControlPoints() - 1)
        if segmentationNode is not None and segmentId:
            self.logic.setSegmentMask(segmentationNode, segmentId, unpack_labels(before))
        self.ui.interactiveStatusLabel.text = "Took back the last prompt."

    def onAcceptPrompts(self) -> None:
        """Keep the segment, clear the prompts for the next object."""
        for node in self._promptNodes:
            node.RemoveAllControlPoints()
        self._promptHistory = []
        self.ui.interactiveStatusLabel.text = "Accepted; place prompts for the next object."

    def onCheckDependencies(self) -> None:
        installed = self._ensureDependencies(includeOptional=True)
        if installed is None:
            return
        self.ui.statusLabel.text = (
            f"Installed: {', '.join(installed)}." if installed else "All Python dependencies are installed."
        )


def vtk_modified_event() -> int:
    import vtk

    return vtk.vtkCommand.ModifiedEvent


#
# CTDeepSegLogic
#


class CTDeepSegLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, callable from scripts: takes and returns MRML nodes, needs no GUI.

    Methods that take a ``progress`` argument accept a ``CTDeepSegLib.jobs.Progress`` (for a progress callback
    and cancellation) and block until done, so a script can simply call them. The panel runs the same engine
    steps in a child process (``startEngine``) and creates MRML nodes from their results here, as MRML requires.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # Segmentation node ID -> (packed labels, {segment ID: label value}) before its last in-place clean-up.
        self._undo: dict[str, tuple[str, dict[str, int]]] = {}

    def getParameterNode(self):
        return CTDeepSegParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ Python dependencies
    @staticmethod
    def missingDependencies(includeOptional: bool = False, formats: Sequence[str] = ()) -> list[Requirement]:
        """Packages that are missing or at a version CTDeepSeg does not work with; with ``formats`` (the network
        classes of model cards: "ONNX", "nnUNet"), also what running models of those formats needs."""
        return unmet_requirements(includeOptional, formats)

    @staticmethod
    def dependencyDetails(includeOptional: bool = True, formats: Sequence[str] = ()) -> str:
        """One line per package: its state, what it is for, and how it would be installed."""
        lines = []
        for requirement in unmet_requirements(includeOptional, formats):
            how = "with pip" if requirement.installed_by == "pip" else f"by the {requirement.installed_by}"
            optional = " (optional)" if requirement.optional else ""
            lines.append(
                f"{requirement.pip_spec}{optional}: {problem(requirement)}; for {requirement.purpose or 'CTDeepSeg'}; "
                f"installed {how}."
            )
        lines.append("Installed packages that Slicer or the PyTorch extension own are pinned and never replaced.")
        return "\n".join(lines)

    def ensureDependencies(
        self,
        confirm: Callable[[str], bool] | None = None,
        includeOptional: bool = False,
        formats: Sequence[str] = (),
    ) -> list[str]:
        """Install missing Python packages after ``confirm(message)`` agrees; returns what was installed. With
        ``formats`` (network classes of model cards), also what models of those formats need (onnxruntime for
        "ONNX", dynamic-network-architectures for "nnUNet"), asked for when such a model is first used.

        torch comes from Slicer's PyTorch extension (which picks the build matching the GPU driver), the rest from
        pip with a constraints file that pins what Slicer and the PyTorch extension installed; numpy, scipy and
        SimpleITK are Slicer's own and never installed. Without consent nothing is installed and a
        ``CTDeepSegError`` says what is missing and how to install it later; so does a failed installation.
        """
        unmet = self.missingDependencies(includeOptional, formats)
        if not unmet:
            return []
        slicers = [r for r in unmet if r.installed_by == "Slicer"]
        if slicers:
            raise CTDeepSegError(
                f"{', '.join(f'{r.distribution} ({problem(r)})' for r in slicers)} should come with Slicer; "
                "reinstall Slicer."
            )
        tooOld = [r for r in unmet if r.installed_by == "PyTorch extension" and problem(r) != "not installed"]
        if tooOld:
            raise CTDeepSegError(
                f"PyTorch is too old for CTDeepSeg ({'; '.join(f'{r.distribution} {problem(r)}' for r in tooOld)}). "
                "Open the PyTorch Utils module, uninstall PyTorch, restart Slicer and press 'Check dependencies' in "
                "CTDeepSeg to install a current version."
            )
        names = ", ".join(requirement.distribution for requirement in unmet)
        torch = [r for r in unmet if r.installed_by == "PyTorch extension"]
        size = (
            "PyTorch is large: about 2-3 GB with GPU (CUDA) support, about 200 MB for the CPU only. "
            if torch
            else "The download is a few tens of MB. "
        )
        message = f"CTDeepSeg needs these Python packages: {names}. {size}Installing takes a few minutes. Install now?"
        if confirm is None or not confirm(message):
            raise CTDeepSegError(
                f"CTDeepSeg cannot run without {names}. Nothing was installed. To install later, press "
                "'Check dependencies' in the CTDeepSeg panel, or run in the Python console: "
                "CTDeepSeg.CTDeepSegLogic().ensureDependencies(confirm=lambda message: True)"
            )
        try:
            self._installTorch(torch)
            self._pipInstall([r for r in unmet if r.installed_by == "pip"])
        except CTDeepSegError:
            raise
        except Exception as error:  # pip or light-the-torch failed: a network, proxy or resolver problem
            raise CTDeepSegError(
                f"Installing {names} failed ({error}). Check the network connection (Slicer uses the HTTPS_PROXY "
                "setting when a proxy is needed), then press 'Check dependencies' again; pip's output is in the "
                "Python console."
            ) from None
        still = self.missingDependencies(includeOptional, formats)
        if still:
            raise CTDeepSegError(
                f"Installing {', '.join(f'{r.distribution} ({problem(r)})' for r in still)} did not succeed; "
                "see the Python console for pip's output."
            )
        return [requirement.distribution for requirement in unmet]

    @staticmethod
    def _pipInstall(requirements: Sequence[Requirement]) -> None:
        import os
        import tempfile

        from CTDeepSegLib.dependencies import constraints, pip_arguments

        if not requirements:
            return
        handle, path = tempfile.mkstemp(prefix="ctdeepseg-constraints-", suffix=".txt")
        try:
            with os.fdopen(handle, "w") as stream:
                stream.write(constraints())
            for arguments in pip_arguments(requirements, path):
                slicer.util.pip_install(arguments)
        finally:
            os.remove(path)

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
        from CTDeepSegLib.dependencies import REQUIREMENTS

        specifier = {r.distribution: r.specifier for r in REQUIREMENTS}
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False,
            torchVersionRequirement=specifier["torch"],
            torchvisionVersionRequirement=specifier["torchvision"],
        )
        if torch is None:
            raise CTDeepSegError("Installing PyTorch failed; see the PyTorch Utils module for details.")

    # ------------------------------------------------------------------ engine work in a child process
    @staticmethod
    def startEngine(action: str, *args, **kwargs):
        """Start ``CTDeepSegLib.actions.<action>(*args, **kwargs)`` in a child Python process (Slicer's
        ``PythonSlicer``); returns a ``CTDeepSegLib.background.runner.EngineProcess`` to ``poll`` from a timer,
        ``cancel``, and read the ``result`` of."""
        from CTDeepSegLib.actions import GRACE_S
        from CTDeepSegLib.background.runner import EngineProcess

        return EngineProcess(action, *args, grace_s=GRACE_S.get(action, 5.0), **kwargs).start()

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
    def downloadableModels(task: str = "segmentation") -> list[dict]:
        """Catalogue models of ``task`` that CTDeepSeg runs and that are not installed yet."""
        from CTDeepSegLib.catalogue.entries import load_catalogue
        from CTDeepSegLib.catalogue.install import read_manifest
        from CTDeepSegLib.model_paths import user_models_folder

        models = user_models_folder()
        try:
            entries = load_catalogue()
        except CTDeepSegError as error:  # the panel still works with the installed models
            logging.warning(str(error))
            return []
        return [
            entry
            for entry in entries
            if entry["supported"] and entry["task"] == task and read_manifest(models / entry["name"]) is None
        ]

    @staticmethod
    def downloadLabel(entry: dict) -> str:
        """How the model chooser lists a catalogue model that is not installed yet."""
        from CTDeepSegLib.catalogue.entries import size_text

        size = size_text(entry, "size shown when it starts")
        return f"{entry['name']} {entry['versions'][0]['version']} (download, {size})"

    @staticmethod
    def downloadNotice(entry: dict, source: str | None = None) -> str:
        """What the user agrees to before a model is fetched: source, licence (non-commercial flagged), checks."""
        from CTDeepSegLib.catalogue.entries import find_release

        release = find_release(entry["name"], [entry])  # the entry in hand: no second read of the catalogue
        where = f"from {source}" if source else f"from {release.urls[0]}"
        return (
            f"Add {entry['title']} ({entry['source']}, {release.key}) {where}?\n\n"
            f"{release.licence_line()}\n"
            f"{entry['modality']} {entry['task']}, {entry['region']}, {len(entry['structures'])} structures.\n\n"
            "The file is checked against the catalogue's checksum before it is unpacked, and a broken download "
            "resumes where it stopped."
        )

    @staticmethod
    def catalogueEntryForFile(path: str) -> dict:
        """The catalogue model a downloaded zip is, by its published file name."""
        from CTDeepSegLib.catalogue.entries import release_for_file

        return release_for_file(Path(path)).entry

    @staticmethod
    def importModel(source: str, name: str | None = None, cardFile: str | None = None) -> str:
        """Install an ONNX file with its card (a model.json-style file), or register an nnU-Net v2 results folder
        (blocking; the panel runs it in the background); returns the new model folder."""
        from CTDeepSegLib.actions import import_model

        return import_model(source, name, cardFile)

    @staticmethod
    def pullModel(
        name: str,
        source: str | None = None,
        mirror: str | None = None,
        acceptLicence: bool = False,
        progress: Progress | None = None,
    ) -> str:
        """Install catalogue model ``NAME[@VERSION]`` (blocking; the panel runs it in the background)."""
        from CTDeepSegLib.actions import pull_model

        return pull_model(name, source=source, mirror=mirror, accept_licence=acceptLicence, progress=progress)

    def addSegmentation(self, result, volumeNode, name: str | None = None):
        """A segmentation node for a ``SegmentationResult``: named, coloured segments with SNOMED-CT terminology,
        reference geometry from ``volumeNode``, placed in the same study folder, with the model's prediction
        kept beside it (for measuring a correction later)."""
        from CTDeepSegLib.mrml_bridge import keep_original_prediction, place_beside, set_terminology

        card = result.card
        names = {label.value: (label.name, label.colour) for label in card.labels}
        node = self.labelsToSegmentation(
            result.labels, volumeNode, names, name or f"{volumeNode.GetName()} {card.name}"
        )
        set_terminology(node, {label.name: label.snomed for label in card.labels if label.snomed}, self.terminology())
        place_beside(node, volumeNode)
        keep_original_prediction(node, result.labels, self.modelRecord(card))
        # what the model was unsure of, and any scope warning, stay with the segmentation (saved with the scene)
        node.SetAttribute("CTDeepSeg.confidence", json.dumps(result.confidence))
        node.SetAttribute("CTDeepSeg.notes", json.dumps(result.notes))
        return node

    @staticmethod
    def terminology() -> str:
        """The name of CTDeepSeg's terminology context (its codes for every label the models use), loaded into
        Slicer's Terminologies module on first use."""
        logic = slicer.modules.terminologies.logic()
        return logic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))

    @staticmethod
    def modelRecord(card) -> dict:
        """Name, version, weights SHA-256 and labels of a model: what a training pair's provenance records."""
        from CTDeepSegLib.model_store import model_record

        return {**model_record(card), "labels": {str(label.value): label.name for label in card.labels}}

    def segment(self, volumeNode, model=None, device: str = "auto", progress: Progress | None = None, **options):
        """Segment a volume node; returns a new segmentation node ready to edit (blocking, in this process)."""
        from CTDeepSegLib.actions import segment

        result = segment(self.volumeFromNode(volumeNode), model, device, progress, **options)
        for note in result.notes:
            logging.warning(note)
        return self.addSegmentation(result, volumeNode)

    # ------------------------------------------------------------------ detection
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
        rows = findings_rows(result.findings)
        for roi, box, row in zip(rois, result.findings, rows):
            roi.GetDisplayNode().SetSelectedColor(*self.confidenceColour(box.score))
            roi.GetDisplayNode().SetColor(*self.confidenceColour(box.score))
            roi.SetAttribute("CTDeepSeg.Score", f"{box.score:.4f}")
            place_beside(roi, volumeNode)
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

    @staticmethod
    def findingRoi(tableNode, row: int):
        """The ROI node of row ``row`` of a findings table (its ``roi`` column), or None."""
        if tableNode is None or not 0 <= row < tableNode.GetNumberOfRows():
            return None
        column = tableNode.GetColumnIndex("roi")
        return slicer.mrmlScene.GetNodeByID(tableNode.GetCellText(row, column)) if column >= 0 else None

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
        """Find lesions in a volume node: (ROI nodes, findings table node, lesion segmentation node or None).

        With ``segmentLesions`` each finding's box prompts the interactive model (``segmenter``: its name or folder,
        default ``ctdeepseg-interactive``), one segment per finding."""
        from CTDeepSegLib.actions import detect

        result, lesions = detect(
            self.volumeFromNode(volumeNode), model, device, threshold, segmentLesions, segmenter, progress
        )
        for note in result.notes:
            logging.warning(note)
        return self.addFindings(result, volumeNode, lesions)

    # ------------------------------------------------------------------ interactive segmentation
    @staticmethod
    def promptsFromRas(include: Sequence = (), exclude: Sequence = (), box=None):
        """``Prompts`` from RAS points (as markups and the slice views give them) and a box: a markups ROI node,
        or two opposite RAS corners."""
        from CTDeepSegLib.interactive.prompts import Prompts, box_from_corners, ras_to_lps
        from CTDeepSegLib.mrml_bridge import roi_node_to_box

        if box is not None and hasattr(box, "GetObjectToNodeMatrix"):
            box = roi_node_to_box(box)
        elif box is not None:
            box = box_from_corners(ras_to_lps(box[0]), ras_to_lps(box[1]))
        return Prompts.from_ras(include, exclude, box)

    @staticmethod
    def promptNodes() -> tuple:
        """The markups nodes the panel places prompts in: include points (green), exclude points (red) and a box
        (yellow ROI); made on first use and found again by their role attribute."""
        roles = (
            ("include", "vtkMRMLMarkupsFiducialNode", (0.2, 0.9, 0.3)),
            ("exclude", "vtkMRMLMarkupsFiducialNode", (0.95, 0.25, 0.2)),
            ("box", "vtkMRMLMarkupsROINode", (0.95, 0.8, 0.2)),
        )
        nodes = []
        for role, className, colour in roles:
            found = [
                node for node in slicer.util.getNodesByClass(className) if node.GetAttribute("CTDeepSeg.Prompt") == role
            ]
            node = found[0] if found else slicer.mrmlScene.AddNewNodeByClass(className, f"CTDeepSeg {role}")
            if not found:
                node.SetAttribute("CTDeepSeg.Prompt", role)
                node.CreateDefaultDisplayNodes()
                node.GetDisplayNode().SetSelectedColor(*colour)
                node.GetDisplayNode().SetColor(*colour)
            nodes.append(node)
        return tuple(nodes)

    def promptsFromNodes(self, includeNode, excludeNode, boxNode=None):
        """The prompts placed in the markups nodes (defined points only; the box when it has been placed)."""

        def points(node) -> list:
            defined = []
            for index in range(node.GetNumberOfControlPoints()):
                if node.GetNthControlPointPositionStatus(index) == node.PositionDefined:
                    position = [0.0, 0.0, 0.0]
                    node.GetNthControlPointPositionWorld(index, position)
                    defined.append(position)
            return defined

        placed = boxNode is not None and boxNode.GetControlPointPlacementComplete()
        return self.promptsFromRas(points(includeNode), points(excludeNode), boxNode if placed else None)

    @staticmethod
    def segmentMask(segmentationNode, segmentId: str, volumeNode):
        """One segment as a 0/1 engine ``Volume`` on the volume's grid."""
        from CTDeepSegLib.mrml_bridge import segment_mask

        return segment_mask(segmentationNode, segmentId, volumeNode)

    @staticmethod
    def setSegmentMask(segmentationNode, segmentId: str, mask) -> None:
        """Replace one segment's voxels by a 0/1 engine ``Volume``; the other segments are untouched."""
        from CTDeepSegLib.mrml_bridge import set_segment_mask

        set_segment_mask(segmentationNode, segmentId, mask)

    def clickSegment(
        self,
        volumeNode,
        segmentationNode,
        segmentId: str,
        include: Sequence = (),
        exclude: Sequence = (),
        box=None,
        model=None,
        device: str = "auto",
        refine: bool = True,
    ):
        """Segment the object the prompts point at into ``segmentId`` (blocking, in this process); returns the
        engine's ``ClickResult`` (time, device, cube spacings).

        Points are RAS (as Slicer shows them); ``box`` is a markups ROI node or two opposite RAS corners. With
        ``refine`` the segment's current voxels are the previous result to correct (any segment: the model's,
        one painted by hand, one loaded from a file)."""
        from CTDeepSegLib.actions import click

        volume = self.volumeFromNode(volumeNode)
        volume.require_finite("input volume")
        previous = self.segmentMask(segmentationNode, segmentId, volumeNode) if refine else None
        if previous is not None and not previous.array.any():
            previous = None
        result = click(volume, self.promptsFromRas(include, exclude, box), model, device, previous)
        for note in result.notes:
            logging.warning(note)
        self.setSegmentMask(segmentationNode, segmentId, result.mask)
        return result

    # ------------------------------------------------------------------ training data
    @staticmethod
    def suggestCaseName(volumeNode) -> str:
        """A file-safe case name from the volume's name."""
        from CTDeepSegLib.training_data import suggest_case_name

        return suggest_case_name(volumeNode.GetName())

    @staticmethod
    def trainingPairInputs(volumeNode, segmentationNode, datasetDir: str, originalSegmentationNode=None) -> dict:
        """What an export needs, read from the scene: the image, the corrected labels with the dataset's (or the
        model's) label values, the model's original prediction and record when known. These are the keyword
        arguments of ``CTDeepSegLib.actions.export_pair`` after the dataset folder."""
        import numpy as np

        from CTDeepSegLib.mrml_bridge import original_prediction, segmentation_to_labels
        from CTDeepSegLib.training_data import dataset_labels

        storedOriginal, model = original_prediction(segmentationNode)
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
        original = None
        if originalSegmentationNode is not None:
            original = segmentation_to_labels(originalSegmentationNode, volumeNode, values, use_tags=False)
        elif storedOriginal is not None:
            lookup = np.zeros(max(int(storedOriginal.array.max(initial=0)), *map(int, model["labels"])) + 1, np.uint16)
            for value, name in model["labels"].items():
                lookup[int(value)] = values.get(name, 0)
            original = storedOriginal.with_array(lookup[storedOriginal.array].astype(labels.array.dtype))
        return {
            "image": image,
            "labels": labels,
            "names": names,
            "original": original,
            "model": {key: value for key, value in (model or {}).items() if key != "labels"},
            "source": volumeNode.GetName(),
        }

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
        from CTDeepSegLib.actions import export_pair

        inputs = self.trainingPairInputs(volumeNode, segmentationNode, datasetDir, originalSegmentationNode)
        return export_pair(datasetDir, case=caseName or self.suggestCaseName(volumeNode), replace=replace, **inputs)

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
        model ``name`` in the user's model folder (listed at once); returns its card. Blocks in this process."""
        from CTDeepSegLib.actions import finetune

        return finetune(datasetDir, model, name, epochs, device, resume, progress, **recipe)

    @staticmethod
    def interruptedFinetune(name: str) -> dict | None:
        """The saved state (``epoch``, ``epochs``) of an interrupted fine-tune into model ``name``, or None."""
        from CTDeepSegLib.finetune import interrupted_run

        return interrupted_run(name)

    @staticmethod
    def discardInterruptedFinetune(name: str) -> None:
        """Delete an interrupted fine-tune into model ``name``, so the next one starts afresh."""
        from CTDeepSegLib.finetune import discard_interrupted_run

        discard_interrupted_run(name)

    # ------------------------------------------------------------------ evaluation
    @staticmethod
    def comparisonLabels(segmentationNode, referenceSegmentationNode, referenceVolumeNode=None):
        """Both segmentations as label volumes on one grid, segments matched by name (case-insensitive).

        Returns (prediction labels, reference labels, {value: name}); reads the scene, so it runs here, not in the
        child process."""
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
            segmentation = node.GetSegmentation()
            byName = {
                segmentation.GetNthSegment(i).GetName(): values[segmentation.GetNthSegment(i).GetName().lower()]
                for i in range(segmentation.GetNumberOfSegments())
            }
            return segmentation_to_labels(node, referenceVolumeNode, byName, use_tags=False)

        labelNames = {value: names[key] for key, value in values.items()}
        return labelsOf(segmentationNode), labelsOf(referenceSegmentationNode), labelNames

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
        from CTDeepSegLib.actions import compare

        prediction, reference, labelNames = self.comparisonLabels(
            segmentationNode, referenceSegmentationNode, referenceVolumeNode
        )
        rows = compare(prediction, reference, labelNames)
        return self.showComparison(
            rows, name or f"{segmentationNode.GetName()} vs {referenceSegmentationNode.GetName()}"
        )

    # ------------------------------------------------------------------ post-processing
    @staticmethod
    def postprocessingSteps(
        fillHoles: bool = False,
        fillHolesPlane: str | None = None,
        minIslandMm3: float | None = None,
        keepLargest: int | None = None,
        closingMm: float | None = None,
        openingMm: float | None = None,
    ) -> list[dict]:
        """The engine's step list for these options (checked: a bad value is a ``CTDeepSegError``)."""
        from CTDeepSegLib.postprocess import steps_from_options

        return steps_from_options(fillHoles, fillHolesPlane, minIslandMm3, keepLargest, closingMm, openingMm)

    def applyCleanedLabels(self, segmentationNode, cleaned, inPlace: bool = False):
        """Write cleaned labels back: into a copy named '<name> cleaned' (default, so nothing is lost) or in place,
        keeping the state before so that ``undoPostprocess`` can restore it."""
        from CTDeepSegLib.label_archive import pack_labels
        from CTDeepSegLib.mrml_bridge import copy_segmentation, segment_label_values, update_segments_from_labels

        labelOf = segment_label_values(segmentationNode)
        if inPlace:
            before = pack_labels(self.segmentationToLabels(segmentationNode))
            self._undo[segmentationNode.GetID()] = (before, labelOf)
            target = segmentationNode
        else:
            target = copy_segmentation(segmentationNode, f"{segmentationNode.GetName()} cleaned")
        update_segments_from_labels(target, cleaned, segment_label_values(target))
        return target

    def canUndoPostprocess(self, segmentationNode) -> bool:
        return segmentationNode is not None and segmentationNode.GetID() in self._undo

    def undoPostprocess(self, segmentationNode) -> bool:
        """Restore a segmentation as it was before its last in-place clean-up; False when there is none.

        Segments added since keep their voxels; segments deleted since stay deleted."""
        from CTDeepSegLib.label_archive import unpack_labels
        from CTDeepSegLib.mrml_bridge import update_segments_from_labels

        if not self.canUndoPostprocess(segmentationNode):
            return False
        packed, labelOf = self._undo.pop(segmentationNode.GetID())
        segmentation = segmentationNode.GetSegmentation()
        still = {segmentId: value for segmentId, value in labelOf.items() if segmentation.GetSegment(segmentId)}
        update_segments_from_labels(segmentationNode, unpack_labels(packed), still)
        return True

    def postprocess(self, segmentationNode, inPlace: bool = False, progress: Progress | None = None, **options):
        """Clean a segmentation: ``fillHoles``, ``fillHolesPlane``, ``minIslandMm3``, ``keepLargest``,
        ``closingMm``, ``openingMm``. Works on a copy unless ``inPlace`` (then ``undoPostprocess`` restores it);
        returns (segmentation node, changes), one change per step and segment with the voxels and mL added and
        removed.
        """
        from CTDeepSegLib.actions import postprocess
        from CTDeepSegLib.mrml_bridge import segment_label_values

        steps = self.postprocessingSteps(**options)
        labels = self.segmentationToLabels(segmentationNode)
        cleaned, changes = postprocess(labels, steps, progress)
        target = self.applyCleanedLabels(segmentationNode, cleaned, inPlace)
        nameOf = {
            value: target.GetSegmentation().GetSegment(segmentId).GetName()
            for segmentId, value in segment_label_values(target).items()
        }
        return target, [dict(vars(change), segment=nameOf.get(change.label, "")) for change in changes]

    # ------------------------------------------------------------------ sample data
    def addPhantomToScene(self, phantom, name: str = "Phantom"):
        """Add a phantom's image and its true labels (as a segmentation) to the scene; returns both nodes."""
        from CTDeepSegLib.phantom import LABEL_COLOURS, LABELS

        volumeNode = self.volumeToNode(phantom.image, name)
        names = {value: (LABELS[value], LABEL_COLOURS[value]) for value in LABELS}
        segmentationNode = self.labelsToSegmentation(phantom.labels, volumeNode, names, f"{name} truth")
        return volumeNode, segmentationNode

    def createPhantom(self, seed: int = 0, modality: str = "CT", name: str | None = None, **options):
        """Make a phantom and add it to the scene (console convenience); returns (volume, segmentation, lesions)."""
        from CTDeepSegLib.actions import make_phantom

        phantom = make_phantom(seed=seed, modality=modality, **options)
        volumeNode, segmentationNode = self.addPhantomToScene(phantom, name or f"Phantom {modality} {seed}")
        return volumeNode, segmentationNode, phantom.lesions


#
# CTDeepSegTest
#


class CTDeepSegTest(ScriptedLoadableModuleTest):
    """The self-test Slicer runs (Reload and Test, the SelfTests module, CTest); it drives the logic on real MRML
    nodes. Slicer calls ``runTest()`` directly, so a test that cannot run here (no PyTorch yet) logs why and
    returns instead of raising ``SkipTest``, which Slicer would count as a failure."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        for test in (
            self.test_PhantomThroughLogic,
            self.test_ObliqueVolumeRoundTrip,
            self.test_FindingsAsRoisAndTable,
            self.test_CompareAndPostprocess,
            self.test_EngineInChildProcess,
            self.test_ExportTrainingPair,
            self.test_SegmentPhantomWithShippedModel,
            self.test_DetectPhantomLesions,
        ):
            self.setUp()
            test()

    def _needsDeepLearning(self, what: str) -> bool:
        """True when PyTorch and MONAI are there; else log that ``what`` was skipped and why."""
        missing = CTDeepSegLogic.missingDependencies()
        if missing:
            names = ", ".join(requirement.distribution for requirement in missing)
            logging.warning(f"CTDeepSeg self-test: {what} skipped: needs {names}; install with 'Check dependencies'.")
            self.delayDisplay(f"{what}: skipped (needs {names})")
        return not missing

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
        self.assertEqual(len(rois), len(lesions))
        for lesion, roi in zip(lesions, rois):
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

        sameNode, _ = logic.postprocess(predictionNode, inPlace=True, fillHoles=True)
        self.assertEqual(sameNode.GetID(), predictionNode.GetID())
        self.assertEqual(logic.segmentationToLabels(predictionNode).array[hole], 2)
        self.assertTrue(logic.undoPostprocess(predictionNode))
        np.testing.assert_array_equal(logic.segmentationToLabels(predictionNode).array, labels)
        self.assertFalse(logic.undoPostprocess(predictionNode))
        self.delayDisplay("Test passed")

    def test_EngineInChildProcess(self) -> None:
        """Slicer's Python runs an engine step in a child process and returns exactly what it gives here."""
        import numpy as np

        from CTDeepSegLib.phantom import make_phantom

        self.delayDisplay("Engine in a child process")
        job = CTDeepSegLogic().startEngine("make_phantom", seed=4, shape=(24, 40, 40), spacing=(6, 6, 8))
        phantom = job.wait(timeout=300)
        expected = make_phantom(seed=4, shape=(24, 40, 40), spacing=(6, 6, 8))
        np.testing.assert_array_equal(phantom.labels.array, expected.labels.array)
        self.assertEqual(job.latest.fraction, 1.0)
        self.delayDisplay("Test passed")

    def test_SegmentPhantomWithShippedModel(self) -> None:
        """The default model segments a fresh phantom through the logic, checked by Dice against its truth."""
        self.delayDisplay("Segment a phantom with the shipped model")
        if not self._needsDeepLearning("Segmentation with the shipped model"):
            return
        from CTDeepSegLib.model_store import read_card, resolve_model

        logic = CTDeepSegLogic()
        volumeNode, truthNode, _ = logic.createPhantom(
            seed=77, shape=(80, 96, 96), spacing=(3.0, 3.0, 3.5), lesion_radius_mm=(8.0, 12.0)
        )
        segmentationNode = logic.segment(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(  # one segment per label of the default model, absent ones included
            [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())],
            [label.name for label in read_card(resolve_model(None)).labels],
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
        if not self._needsDeepLearning("Lesion detection"):
            return
        logic = CTDeepSegLogic()
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
