"""ABAW data formats: annotations, test lists, submissions, synthetic s-Aff-Wild2."""

from abaw.data.annotations import Annotations, read_annotations
from abaw.data.labels import AU_NAMES, EXPR_NAMES, N_AU, N_EXPR
from abaw.data.testlist import TestList, read_test_list

__all__ = [
    "AU_NAMES",
    "EXPR_NAMES",
    "N_AU",
    "N_EXPR",
    "Annotations",
    "TestList",
    "read_annotations",
    "read_test_list",
]
