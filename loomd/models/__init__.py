"""Models: the catalogue loomd ships, what is installed in the models directory, and getting
more (`loomctl models list|fetch|verify|remove|install`). Light to import: no network or
model library is loaded until a command needs it."""

from loomd.models.catalogue import CatalogueError, Digest, Model, ModelFile, Source, catalogue
from loomd.models.store import ChecksumMismatch, FileState, ModelsError, ModelState, installed

__all__ = [
    "CatalogueError",
    "ChecksumMismatch",
    "Digest",
    "FileState",
    "Model",
    "ModelFile",
    "ModelState",
    "ModelsError",
    "Source",
    "catalogue",
    "installed",
]
