"""The embedding network's precision: by default ('auto') bfloat16 where the CPU has it in
hardware and float32 elsewhere, either when asked for, and what bf16 changes in the vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from identity.config import Settings
from identity.faces.embed import native_bf16, resolve_precision

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS_DIR = Path(__file__).resolve().parents[2] / "shared" / "models"


def test_auto_is_bf16_only_on_a_cpu_that_has_it_in_hardware() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if native_bf16() else torch.float32)
    assert resolve_precision("auto", gpu) == torch.float32  # the GPU's bf16 path is unmeasured
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("bf16", cpu) == torch.bfloat16  # asked for: honoured, even emulated
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", cpu)


def test_the_setting_takes_only_the_precisions_there_are() -> None:
    from pydantic import ValidationError

    assert Settings().pipeline.precision == "auto"  # lfw-dev accuracy is the same in both (BENCHMARKS.md)
    assert Settings(precision="fp32").pipeline.precision == "fp32"
    with pytest.raises(ValidationError):
        Settings(precision="fp16")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["facenet-keras-128", "w600k-mbf-512"])
def test_bf16_embeddings_are_fp32_ones_to_a_thousandth(model, weights_cache, tmp_path) -> None:
    """Real photos through the pipeline in both precisions (emulated where the CPU lacks
    bf16: slower, the same numbers): every face's vectors agree to cosine ≥ 0.998, far
    closer than any two photos of one person (the calibrated thresholds sit near 0.2-0.6).
    What that does to accuracy is measured on all of lfw-dev in BENCHMARKS.md."""
    from identity.faces.pipeline import FacePipeline

    photos = sorted((DATA_DIR / "lfw-dev").glob("B*/*.jpg"))[:16] + sorted((DATA_DIR / "misc" / "group").iterdir())
    embedded = {}
    for precision in ("fp32", "bf16"):
        settings = Settings(model=model, models_dir=MODELS_DIR, cache_dir=weights_cache, data_dir=tmp_path,
                            device="cpu", precision=precision)
        pipeline = FacePipeline.from_settings(settings)
        assert pipeline.embedder.precision == resolve_precision(precision, torch.device("cpu"))
        embedded[precision] = np.stack([f.embedding for r in pipeline.process(photos) for f in r.faces])
    fp32, bf16 = embedded["fp32"], embedded["bf16"]
    assert fp32.shape == bf16.shape and len(fp32) >= 20  # the same faces: detection is fp32 in both
    cosine = np.einsum("ij,ij->i", fp32, bf16)
    assert cosine.min() >= 0.998, cosine.min()
    assert not np.array_equal(fp32, bf16)  # bf16 did run
