"""The binary colour path is unchanged by K-class data (issue 32): the pairs of a fixed-seed chain
(synthesize, both diffusions, sample, train-seg, fgsm and weighted pgd) are bit-identical to those the
release before it made (tests/binary_chain.py; digests in tests/data/binary_pinned.json; the generated pairs
re-pinned once since, when the tiny UNet's attention became one head)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from augforge.runtime import cpu_info
from tests.binary_chain import digests, run_chain

PINNED = json.loads((Path(__file__).parent / "data" / "binary_pinned.json").read_text())


def test_the_binary_chain_makes_the_previous_release_s_pairs(tmp_path):
    run_chain(tmp_path)
    found, pinned = digests(tmp_path), PINNED["digests"]
    assert sorted(found) == sorted(pinned)
    # the synthetic data is numpy's: the same bytes everywhere
    data = [k for k in pinned if k.startswith("data/")]
    assert {k: found[k] for k in data} == {k: pinned[k] for k in data}
    if (torch.__version__, cpu_info("model name")) != (PINNED["torch"], PINNED["cpu"]):
        pytest.skip(f"networks' pairs pinned on {PINNED['cpu']} with torch {PINNED['torch']}; floating-point "
                    "kernels differ elsewhere")
    assert found == pinned
