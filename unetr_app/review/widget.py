"""The "UNETR review" dock widget: a thin Qt view of a `ReviewSession`.

The case list (risk and flag from qc.csv, status, label volumes), previous/next, accept/reject/flag with a note, the window
preset, Dice against the reference, and "Save correction". Keyboard: PageDown / PageUp for the
next / previous case; Ctrl+Alt+A / R / F to accept / reject / flag.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView, QComboBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
    QMessageBox, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from unetr_app.errors import UnetrError
from unetr_app.review import layers, measures
from unetr_app.review.cases import label_color, label_name
from unetr_app.review.session import OpenCase, ReviewSession
from unetr_app.review.windows import AUTO, CT_WINDOWS, default_preset, looks_like_ct

STATUS_COLOURS = {"pending": "#9e9e9e", "accepted": "#4caf50", "rejected": "#f44336", "flagged": "#ff9800"}
KEYS = {"PageDown": "next_case", "PageUp": "previous_case", "Control-Alt-A": "accept", "Control-Alt-R": "reject", "Control-Alt-F": "flag"}


class ReviewWidget(QWidget):
    def __init__(self, napari_viewer, session: ReviewSession | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.session: ReviewSession | None = None
        self.opened: OpenCase | None = None
        self._volume_queue: list[int] = []  # rows whose label volumes are still to be computed
        self._build()
        for key, method in KEYS.items():
            self.viewer.bind_key(key, lambda _viewer, method=method: getattr(self, method)(), overwrite=True)
        if session is not None:
            self.set_session(session)

    # --- building the panel -------------------------------------------------------------------

    def _build(self) -> None:
        self.open_button = _button("Open folders…", self.choose_folders, "choose scans, predictions and (optionally) references")
        self.title = QLabel("no case open")
        self.title.setWordWrap(True)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["case", "risk", "status", "volumes (mL)"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.cellClicked.connect(lambda row, _column: self.show_case(row))
        self.note = QLineEdit()
        self.note.setPlaceholderText("note (optional)")
        self.window_box = QComboBox()
        self.window_box.addItems([*(f"{name}  W{w:g}/L{l:g}" for name, (w, l) in CT_WINDOWS.items()), AUTO])
        self.window_box.currentIndexChanged.connect(lambda _index: self.apply_window())
        self.labels_info = QLabel("")
        self.labels_info.setTextFormat(Qt.TextFormat.RichText)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.buttons = {
            "previous": _button("◀ Previous", self.previous_case, "previous case (PageUp)"),
            "next": _button("Next ▶", self.next_case, "next case (PageDown)"),
            "accept": _button("Accept", self.accept, "prediction is right (Ctrl+Alt+A); goes to the next case"),
            "reject": _button("Reject", self.reject, "prediction is unusable (Ctrl+Alt+R); goes to the next case"),
            "flag": _button("Flag", self.flag, "needs a second look (Ctrl+Alt+F); goes to the next case"),
            "save": _button("Save correction", self.save_correction, "write the edited labels on the scan's grid"),
        }
        layout = QVBoxLayout(self)
        for row in ([self.open_button], [self.title], [self.table], [self.buttons["previous"], self.buttons["next"]],
                    [self.note], [self.buttons["accept"], self.buttons["reject"], self.buttons["flag"]],
                    [QLabel("window"), self.window_box], [self.labels_info], [self.buttons["save"]], [self.message]):
            line = QHBoxLayout()
            for item in row:
                line.addWidget(item)
            layout.addLayout(line)
        self._set_enabled(False)

    def _set_enabled(self, enabled: bool) -> None:
        for button in self.buttons.values():
            button.setEnabled(enabled)

    # --- session and cases ----------------------------------------------------------------------

    def set_session(self, session: ReviewSession, index: int | None = None) -> None:
        if not self._may_leave_case():
            return
        self.session = session
        self.table.setRowCount(len(session.cases))
        for row, case in enumerate(session.cases):
            self.table.setItem(row, 0, QTableWidgetItem(case.name))
            self.table.setItem(row, 1, _risk_item(session.risk_of(case)))
            self._refresh_row(row)
        self._set_enabled(True)
        self.opened = None
        self.show_case(session.index if index is None else index)
        self._volume_queue = [row for row in range(len(session.cases)) if session.known_volumes(row) is None]
        QTimer.singleShot(0, self._fill_one_volume)

    def choose_folders(self) -> None:
        images = QFileDialog.getExistingDirectory(self, "Folder of scans")
        predictions = images and QFileDialog.getExistingDirectory(self, "Folder of predictions (unetr predict output)")
        if not predictions:
            return
        references = QFileDialog.getExistingDirectory(self, "Folder of reference labels (cancel for none)")
        try:
            session = ReviewSession(Path(images), Path(predictions), Path(references) if references else None)
        except UnetrError as err:
            self.message.setText(f"error: {err}")
            return
        self.set_session(session)

    def show_case(self, index: int) -> bool:
        """Open case `index` (after asking about unsaved edits); False if it stayed where it was."""
        if not self._may_leave_case():
            return False
        session = self.session
        try:
            self.opened = session.open(index)
        except UnetrError as err:  # a broken file: say which, stay usable for the other cases
            self.message.setText(f"error: {err}")
            if self.opened is not None:
                self.table.selectRow(session.index)
            return False
        preset = self._preset_for(self.opened.image)
        layers.show_case(self.viewer, self.opened, session.label_names, preset)
        self._select_preset(preset)
        self.viewer.layers["prediction"].events.paint.connect(self._on_paint)  # once per layer: same callback
        self.go_to_largest_region()
        self.table.selectRow(session.index)
        self._refresh_row(session.index)
        self._refresh_title()
        self._refresh_labels_info()
        return True

    def has_unsaved_edits(self) -> bool:
        if self.opened is None or "prediction" not in self.viewer.layers:
            return False
        return not np.array_equal(np.asarray(self.viewer.layers["prediction"].data), self.opened.labels)

    def _may_leave_case(self) -> bool:
        """Unsaved edits are never dropped silently: save them, discard them, or stay."""
        if not self.has_unsaved_edits():
            return True
        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(
            self, "Unsaved correction", f"{self.opened.case.name} has edits that are not saved. Save the correction?",
            buttons.Save | buttons.Discard | buttons.Cancel, buttons.Save,
        )
        if answer == buttons.Save:
            self.save_correction()
        elif answer == buttons.Discard:
            self.viewer.layers["prediction"].data = self.opened.labels.copy()
        return answer in (buttons.Save, buttons.Discard)

    def _preset_for(self, image: np.ndarray) -> str:
        """CT keeps the window the reviewer chose (abdomen at first); anything else gets auto-contrast."""
        if not looks_like_ct(image):
            return AUTO
        return self.window_preset() if "scan" in self.viewer.layers else default_preset(image)

    def go_to_largest_region(self) -> None:
        """Show the axial slice through the largest predicted region; with an empty prediction,
        through the largest reference region (what the model missed)."""
        slice_index = measures.largest_region_slice(self.opened.labels)
        if slice_index is None and self.opened.reference is not None:
            slice_index = measures.largest_region_slice(self.opened.reference)
        if slice_index is not None:
            self.viewer.dims.set_point(0, slice_index * self.opened.grid.display_scale[0])

    def next_case(self) -> None:
        self._step(+1)

    def previous_case(self) -> None:
        self._step(-1)

    def _step(self, direction: int) -> None:
        """Open the next case in `direction` that can be read (a broken one is reported and skipped)."""
        if self.session is None or not self._may_leave_case():
            return
        index = self.session.index + direction
        while 0 <= index < len(self.session.cases) and not self.show_case(index):
            index += direction

    # --- verdicts and corrections -----------------------------------------------------------------

    def accept(self) -> None:
        self.set_status("accepted")

    def reject(self) -> None:
        self.set_status("rejected")

    def flag(self) -> None:
        self.set_status("flagged")

    def set_status(self, status: str) -> None:
        """Record the verdict (with the note) in review.csv, then move on to the next case."""
        if self.session is None:
            return
        self.session.set_status(status, self.note.text().strip())
        self.message.setText(f"{self.session.current.name}: {status}")
        self._refresh_row(self.session.index)
        self.note.clear()
        self._refresh_title()
        self.next_case()

    def save_correction(self) -> None:
        if self.opened is None or "prediction" not in self.viewer.layers:
            self.message.setText("nothing to save: the prediction layer is gone; reopen the case")
            return
        edited = np.asarray(self.viewer.layers["prediction"].data)
        changed = self.session.save_correction(self.opened, edited)
        path = self.session.correction_path(self.opened.case)
        self.message.setText(f"saved {path} ({changed} voxels changed from the prediction)")
        self._refresh_row(self.session.index)
        self._refresh_labels_info()

    # --- window -----------------------------------------------------------------------------

    def window_preset(self) -> str:
        return self.window_box.currentText().split("  ")[0]

    def _select_preset(self, preset: str) -> None:
        names = [self.window_box.itemText(i).split("  ")[0] for i in range(self.window_box.count())]
        self.window_box.blockSignals(True)
        self.window_box.setCurrentIndex(names.index(preset))
        self.window_box.blockSignals(False)

    def apply_window(self) -> None:
        if self.opened is not None and "scan" in self.viewer.layers:
            layers.apply_window(self.viewer.layers["scan"], self.opened.image, self.window_preset())

    # --- refreshing the text ------------------------------------------------------------------

    def _refresh_title(self) -> None:
        session, opened = self.session, self.opened
        record = session.log[session.current.name]
        source = "saved correction" if opened.corrected else "prediction"
        quality = session.risk_of(session.current)
        risk = "" if quality is None else f", risk {quality['risk']:.2f}" + (f" ({quality['flag']})" if quality["flag"] else "")
        self.title.setText(f"<b>{session.current.name}</b> ({session.index + 1}/{len(session.cases)}): {record.status}{risk}, showing the {source}")

    def _refresh_row(self, row: int) -> None:
        session = self.session
        record = session.log[session.cases[row].name]
        status = QTableWidgetItem(record.status + (" ✎" if record.voxels_changed else ""))
        status.setForeground(_qcolor(STATUS_COLOURS[record.status]))
        self.table.setItem(row, 2, status)
        volumes = session.known_volumes(row)
        text = "…" if volumes is None else ", ".join(f"{label_name(session.label_names, v)} {ml:.1f}" for v, ml in volumes.items())
        self.table.setItem(row, 3, QTableWidgetItem(text))

    def _refresh_labels_info(self) -> None:
        session, opened = self.session, self.opened
        labels = np.asarray(self.viewer.layers["prediction"].data)
        volumes = session.volumes_of(labels, opened.grid.voxel_ml)
        dice = session.dice(opened, labels)
        lines = []
        for value, ml in volumes.items():
            name = label_name(session.label_names, value)
            colour = "#%02x%02x%02x" % tuple(int(c * 255) for c in label_color(value)[:3])
            score = dice.get(name)
            dice_text = "" if not dice else f", Dice {score:.3f}" if score is not None else ", Dice —"
            lines.append(f"<span style='color:{colour}'>■</span> {value} {name}: {ml:.1f} mL{dice_text}")
        header = "Dice against the reference" if dice else "no reference labels (--labels) for Dice"
        self.labels_info.setText("<br>".join([header, *lines]))

    def _on_paint(self, _event=None) -> None:
        self._refresh_labels_info()

    def _fill_one_volume(self) -> None:
        """Compute one case's label volumes per event-loop turn, so the panel stays responsive."""
        if self._volume_queue:
            self._fill_volume(self._volume_queue.pop(0))
            QTimer.singleShot(0, self._fill_one_volume)

    def fill_all_volumes(self) -> None:
        while self._volume_queue:
            self._fill_volume(self._volume_queue.pop(0))

    def _fill_volume(self, row: int) -> None:
        try:
            self.session.volumes_ml(row)
        except UnetrError as err:
            self.table.setItem(row, 3, QTableWidgetItem("unreadable"))
            self.table.item(row, 3).setToolTip(str(err))
            return
        self._refresh_row(row)


def _risk_item(quality: dict | None) -> QTableWidgetItem:
    """The risk (with a ⚑ and the reason as tooltip when the case is flagged); empty without qc.csv."""
    if quality is None:
        return QTableWidgetItem("")
    item = QTableWidgetItem(f"{quality['risk']:.2f}" + (" ⚑" if quality["flag"] else ""))
    if quality["flag"]:
        item.setToolTip(quality["flag"])
    return item


def _button(text: str, slot, tip: str) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    button.clicked.connect(lambda _checked=False: slot())
    return button


def _qcolor(hex_colour: str):
    from qtpy.QtGui import QBrush, QColor

    return QBrush(QColor(hex_colour))
