"""Segments carry SNOMED-CT codes from a terminology that ships with the module and that Slicer loads, so the
terminology selector shows them as known entries (not codes outside the named list)."""

from __future__ import annotations

from pathlib import Path

from CTDeepSegLib.inference import SegmentationResult
from CTDeepSegLib.model_store import read_card
from CTDeepSegLib.phantom import make_phantom

MODELS = Path(__file__).resolve().parents[1] / "Resources" / "Models"
CONTEXT = "Segmentation category and type - CTDeepSeg"


def test_every_shipped_label_is_an_entry_of_the_shipped_terminology(scene, ctdeepseg_module):
    import slicer

    assert ctdeepseg_module.CTDeepSegLogic.terminology() == CONTEXT
    terminologies = slicer.modules.terminologies.logic()
    # The interactive model's one label ("object") names nothing: its result goes into a segment the user chose.
    cards = [read_card(folder) for folder in MODELS.iterdir()]
    labels = [label for card in cards if card["task"] != "interactive" for label in card.labels]
    assert {label.name for label in labels} == {"lung", "liver", "spine", "lesion"}
    for label in labels:
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.FindTypeInTerminologyBy3dSlicerLabel(CONTEXT, label.name, entry), label.name
        assert [entry.GetCategoryObject().GetCodeValue(), entry.GetTypeObject().GetCodeValue()] == [
            label.snomed["category"][1],
            label.snomed["type"][1],
        ]


def test_segments_made_by_the_logic_point_at_those_entries(scene, ctdeepseg_module):
    import slicer
    import vtk

    logic = ctdeepseg_module.CTDeepSegLogic()
    phantom = make_phantom(seed=1, shape=(24, 40, 40), spacing=(6, 6, 8))
    volumeNode = logic.volumeToNode(phantom.image, "image")
    card = read_card(MODELS / "ctdeepseg-phantom-ct")
    node = logic.addSegmentation(SegmentationResult(phantom.labels, None, card, "cpu", 0.0), volumeNode)
    terminologies = slicer.modules.terminologies.logic()
    segmentation = node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        tag = vtk.reference("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
        tag = str(tag)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(tag, entry), tag
        assert entry.GetTerminologyContextName() == CONTEXT
        category, kind = entry.GetCategoryObject(), entry.GetTypeObject()
        found = terminologies.FindTerminologyNames(
            "SCT", category.GetCodeValue(), "SCT", kind.GetCodeValue(), "", "", [CONTEXT]
        )
        assert CONTEXT in found, (segment.GetName(), found)
