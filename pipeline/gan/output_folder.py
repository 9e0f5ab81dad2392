"""What ``sim2real-translate`` may write to and replace: never what it did not write.

An output that is, lies inside or holds the input is refused; an existing output folder is replaced
only when it is empty or an earlier translation (its :data:`TRANSLATION_MARKER`, or for runs made
before the marker existed a ``path,label,source`` manifest), and only when it holds no file that
translation did not write.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from pipeline.cli import UserError
from pipeline.data.manifest import LABEL_ORIGIN_FILE, MANIFEST_NAME
from pipeline.messages import count_and_examples

TOOL = "sim2real-translate"
TRANSLATION_MARKER = "translation.json"   # written into every output: what makes a folder this tool's own
PROVENANCE_NAME = "provenance.json"
ANNOTATIONS_NAME = "annotations.json"       # the boxes of a detection split, carried over unchanged
MANIFEST_COLUMNS = ["path", "label", "source"]
DESKTOP_LITTER = {".DS_Store", "Thumbs.db", "desktop.ini"}  # file browsers drop these; never user data


class TranslateError(UserError):
    """A translation refused before it starts: paths that would overwrite or delete what the tool did not write."""


def check_input_folder(folder: Path) -> None:
    """``folder`` must be an existing folder; a file says it is one (a ``manifest.csv`` names its folder)."""
    if folder.is_dir():
        return
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: input folder not found")
    hint = f"; pass the folder that holds it: {folder.parent}" if folder.name == MANIFEST_NAME else ""
    raise TranslateError(f"--input {folder} exists but is a file, not a folder; it takes a folder of images "
                         f"or a prepared split with {MANIFEST_NAME}{hint}")


def check_paths(input_folder: Path, out_dir: Path) -> None:
    """Refuse an output that is the input, lies inside it, or holds it (symlinks resolved).

    The output folder is replaced whole, so an input inside it would be deleted; an output inside the
    input would mix translations into the renders (and be read as input by the next run).
    """
    source, target = input_folder.resolve(), out_dir.resolve()
    if target == source:
        relation, harm = "is the --input folder", "writing there would replace the input images"
    elif target.is_relative_to(source):
        relation, harm = "lies inside the --input folder", "translations would be mixed into the input"
    elif source.is_relative_to(target):
        relation, harm = "holds the --input folder", "replacing the output folder would delete the input"
    else:
        return
    resolved = str(source) if target == source else f"{target} and {source}"
    raise TranslateError(f"--output {out_dir} {relation} {input_folder} (resolved: {resolved}); {harm}; "
                         f"choose an output folder outside the input")


def check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything but a missing or empty folder or an earlier output of this tool."""
    if out_dir.is_symlink():
        raise TranslateError(f"--output {out_dir} is a symbolic link (to {out_dir.resolve()}); refusing to replace "
                             f"it: give the path of a real folder")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise TranslateError(f"--output {out_dir} exists and is a file, not a folder; refusing to replace it")
    files = files_below(out_dir)
    if not files:
        return
    written = translation_files(out_dir)
    if written is None:
        raise TranslateError(f"--output {out_dir} already exists and was not written by {TOOL} (no "
                             f"{TRANSLATION_MARKER}; it holds {count_and_examples(files)}); refusing to replace "
                             f"it: choose a new output folder, or remove this one yourself")
    foreign = [f for f in files if f not in written]
    if foreign:
        raise TranslateError(f"--output {out_dir} is an earlier translation but also holds files {TOOL} did not "
                             f"write ({count_and_examples(foreign)}); refusing to replace it: move them out "
                             f"or choose a new output folder")


def files_below(folder: Path) -> list[str]:
    """Every file and link below ``folder`` (relative POSIX paths, sorted), desktop litter left out."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if (p.is_symlink() or not p.is_dir()) and p.name not in DESKTOP_LITTER)


def translation_files(folder: Path) -> Optional[set[str]]:
    """The files an earlier run of this tool wrote into ``folder``, or None when none did.

    A run leaves :data:`TRANSLATION_MARKER` (runs before it existed: a ``path,label,source`` manifest);
    its files are that manifest, the marker, the provenance and every path the manifest lists.
    """
    try:
        with (folder / MANIFEST_NAME).open(newline="") as fh:
            rows = csv.reader(fh)
            header = next(rows, None)
            paths = {row[0] for row in rows if row}
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if header != MANIFEST_COLUMNS and not (folder / TRANSLATION_MARKER).is_file():
        return None
    return paths | {MANIFEST_NAME, TRANSLATION_MARKER, PROVENANCE_NAME, ANNOTATIONS_NAME, LABEL_ORIGIN_FILE}
