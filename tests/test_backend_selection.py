"""Which backend a run gets: unsloth only with a CUDA GPU and an importable unsloth."""

from __future__ import annotations

import pytest
import torch

from graftline.engine.backends import BackendError, choose_backend, select_backend
from graftline.engine.backends.base import unsloth_importable


@pytest.mark.parametrize(("requested", "cuda", "unsloth", "expected"), [
    ("auto", True, True, "unsloth"),
    ("auto", True, False, "hf"),
    ("auto", False, True, "hf"),
    ("auto", False, False, "hf"),
    ("hf", True, True, "hf"),
    ("unsloth", True, True, "unsloth"),
])
def test_choice(requested: str, cuda: bool, unsloth: bool, expected: str) -> None:
    assert choose_backend(requested, cuda=cuda, unsloth=unsloth) == expected


@pytest.mark.parametrize(("cuda", "unsloth", "words"), [
    (False, True, "CUDA GPU"), (True, False, "cannot be imported")])
def test_asking_for_unsloth_where_it_cannot_run_is_a_clear_error(cuda: bool, unsloth: bool,
                                                                  words: str) -> None:
    with pytest.raises(BackendError) as error:
        choose_backend("unsloth", cuda=cuda, unsloth=unsloth)
    assert words in error.value.message and error.value.fix


def test_this_machine() -> None:
    """The real probe on the machine the tests run on."""
    chosen = select_backend("auto")
    if torch.cuda.is_available() and unsloth_importable():
        assert chosen.name == "unsloth"
    else:
        assert chosen.name == "hf"
        assert chosen.trainer_defaults().get("use_cpu", False) == (not torch.cuda.is_available())
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="CUDA"):
            select_backend("unsloth")
    with pytest.raises(BackendError, match="unknown backend"):
        choose_backend("tpu", cuda=False, unsloth=False)
