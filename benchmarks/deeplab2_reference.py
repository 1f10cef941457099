#!/usr/bin/env python3
"""deeplab2 reference harness: Google's deeplab2 MaX-DeepLab (TensorFlow) with seeded random
weights, saved as the TF2 object-based checkpoint deeplab2's trainer (Orbit) writes, plus the
model's outputs on fixed inputs -- what ``deeplab2_parity.py`` and the converter's tests compare
against. It imports deeplab2 (unmodified) from ``PYTHONPATH`` and contains none of its code.

TensorFlow environment (about 3 minutes; TF 2.15.1 is the last TF whose ``tf.keras`` is
Keras 2, which deeplab2 needs), outside this repository::

    apt-get install -y protobuf-compiler
    python3 -m venv $TF_VENV
    $TF_VENV/bin/pip install tensorflow==2.15.1 pillow scipy pyyaml immutabledict
    # deeplab2 at commit 64bc1c1 (github.com/google-research/deeplab2) cloned as
    # $DEEPLAB2_SRC/deeplab2, then its protos compiled:
    (cd $DEEPLAB2_SRC && protoc deeplab2/*.proto --python_out=.)
    PYTHONPATH=$DEEPLAB2_SRC DEEPLAB2_SRC=$DEEPLAB2_SRC \
        $TF_VENV/bin/python benchmarks/deeplab2_reference.py --variant small --out $REFS

Variants: ``small`` and ``small_l`` (the MaX-DeepLab-S / -L topologies at tiny widths, a few
hundred thousand parameters), ``max_s`` (the real MaX-DeepLab-S, COCO config unmodified),
``max_l`` (the real MaX-DeepLab-L, 451M parameters, ~1.8 GB checkpoint; needs ~10 GB of
memory), and ``backbones`` (deeplab2's own ImageNet encoder instances -- MaX-S backbone, MaX-L
backbone, ResNet-50 -- at tiny widths, each saved as deeplab2 loads an ``initial_checkpoint``).

Per model variant it writes, under ``--out/<variant>/``:
  ckpt/ckpt-0.{index,data-00000-of-00001}, ckpt/checkpoint   the checkpoint (CheckpointManager)
  variables.txt        tf.train.list_variables of that checkpoint: key, shape, dtype
  variables_map.tsv    checkpoint key -> Keras variable name -> shape (model weights only)
  inputs.npz           the fixed inputs, RGB NHWC float32 in [0, 255] (the model normalises)
  raw_<tag>.npz        the decoder's output dict (before the post-processor), NHWC as deeplab2
  post_<tag>.npz       the post-processed panoptic outputs of deeplab2's own post-processor
  post_permissive_<tag>.npz  the same post-processor with all thresholds / area limits at 0
  endpoints_<tag>.npz  encoder endpoints (stage1..5, feature_panoptic, transformer features)
  meta.json            config, seeds, timings, shapes, output statistics, conventions; ``port``
                       names our model and the ``build_model`` overrides of the same network
  config.textproto     the exact ExperimentOptions used
For ``small`` also ckpt_with_optimizer/ (emulated training checkpoint with Adam slots).
``backbones`` writes ``backbones/<instance>/`` with ckpt/, variables.txt, inputs.npz,
endpoints.npz (res2..res5 of one input) and meta.json.

The weights are deeplab2's own initialisers (seeded), then *randomised* so that every weight
matters for the outputs (deeplab2 starts the last BN of every residual branch at gamma = 0,
which would make those branches invisible to a parity test): those residual-final gammas ~
U(0.05, 0.15), all other BN gammas ~ U(0.5, 1.0), BN betas ~ N(0, 0.1^2), conv biases ~
N(0, 0.2^2), the three final 1x1 classifiers ~ N(0, 1/fan_in); then BN moving statistics are
*calibrated*: one training-mode forward on a batch of random noise images with BN momentum 0
(drop path and dropout switched off for that pass only), so every BN's moving mean/variance are
its input's batch statistics and eval-mode activations stay well scaled.
``--no-randomize`` keeps the raw initialisers (moving stats 0/1, zero gammas).
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The folder holding the deeplab2 package (protos compiled); PYTHONPATH works as well.
DEEPLAB2_SRC = os.environ.get("DEEPLAB2_SRC", "deeplab2_src")
if DEEPLAB2_SRC not in sys.path:
    sys.path.insert(0, DEEPLAB2_SRC)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from deeplab2 import common, config_pb2  # noqa: E402
from deeplab2.data import dataset  # noqa: E402
from deeplab2.model import deeplab  # noqa: E402
from deeplab2.model.encoder import axial_resnet_instances  # noqa: E402
from deeplab2.model.layers import axial_block_groups  # noqa: E402
from deeplab2.model.post_processor import post_processor_builder  # noqa: E402
from google.protobuf import text_format  # noqa: E402

CONFIG_S = "deeplab2/configs/coco/max_deeplab/max_deeplab_s_os16_res641_400k.textproto"
CONFIG_L = "deeplab2/configs/coco/max_deeplab/max_deeplab_l_os16_res1025_400k.textproto"
DATASET = "coco_panoptic"

RAW_KEYS = (
    common.PRED_SEMANTIC_LOGITS_KEY,  # 'semantic_logits'                [B, h, w, 134]
    common.PRED_SEMANTIC_PROBS_KEY,  # 'semantic_probs' = softmax(...)  [B, h, w, 134]
    common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,  # [B, h, w, D], L2-normalised
    common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,  # [B, h, w, N]
    common.PRED_TRANSFORMER_CLASS_LOGITS_KEY,  # [B, N, 134], last = void
)
ENDPOINT_KEYS = (
    "stage1", "stage2", "stage3", "stage4", "stage5", "backbone_output", "feature_semantic",
    "feature_panoptic", "transformer_class_feature", "transformer_mask_feature",
)


def small_config_edit(config: config_pb2.ExperimentOptions) -> None:
    """The SMALL variant's proto-level changes (everything the textproto can express)."""
    mo = config.model_options
    mo.backbone.backbone_width_multiplier = 0.0625  # stage outputs 16/32/64/128 (x1: 256..2048)
    mo.backbone.stem_width_multiplier = 0.0625  # stem 4/4/8 (x1: 64/64/128)
    mo.backbone.backbone_layer_multiplier = 0.5  # blocks int([3,4,6,3] * 0.5) = [1,2,3,1]
    mo.decoder.decoder_channels = 16
    mo.decoder.aspp_channels = 16
    mo.max_deeplab.pixel_space_head.output_channels = 16
    # head_channels stays 256: the PyTorch port hard-codes the pixel head's 256 channels.
    mo.max_deeplab.auxiliary_low_level[0].channels_project = 8  # res3
    mo.max_deeplab.auxiliary_low_level[1].channels_project = 4  # res2
    mo.max_deeplab.auxiliary_semantic_head.head_channels = 16


def small_l_config_edit(config: config_pb2.ExperimentOptions) -> None:
    """SMALL_L: MaX-DeepLab-L's topology (wide-ResNet stem and stages, axial stages 4-5, one
    stacked decoder in the backbone, one extra with 3 blocks a stage) at tiny widths."""
    mo = config.model_options
    mo.backbone.backbone_width_multiplier = 0.0625
    mo.backbone.stem_width_multiplier = 0.0625
    mo.backbone.backbone_layer_multiplier = 0.5  # blocks int([3,6,3,3] * 0.5) = [1,3,1,1]
    mo.max_deeplab.pixel_space_head.output_channels = 16
    mo.max_deeplab.auxiliary_semantic_head.head_channels = 16


SMALL_ENCODER_KWARGS = dict(
    memory_channels=64,
    base_transformer_expansion=0.25,  # dual-path filters 32 at stride 16: bottleneck 64, K 32
    global_feed_forward_network_channels=64,
    num_mask_slots=32,
    max_num_mask_slots=32,
    block_group_config=dict(
        dual_path_transformer_layer_config=dict(feed_forward_network_channels=128),
    ),
)

VARIANTS = {
    "max_s": dict(
        description="MaX-DeepLab-S, COCO (133 classes + void), 128 slots, unmodified config",
        config=CONFIG_S,
        config_edit=None,
        encoder_kwargs=None,
        build_size=(641, 641),
        inputs=(("a_641x641", 641, 641), ("b_513x769", 513, 769)),
        calib_batch=2,
        endpoints=True,
        optimizer_ckpt=False,
    ),
    "small": dict(
        description=(
            "MaX-DeepLab-S topology at tiny width (COCO 134 outputs, 32 slots): the unmodified "
            "config with proto-level width/depth/head changes, plus deeplab2's own "
            "AxialResNetInstance keyword overrides for the transformer/memory widths"
        ),
        config=CONFIG_S,
        config_edit=small_config_edit,
        # Passed to axial_resnet_instances.get_model (deeplab2's documented kwargs override of
        # the MaXDeepLabS instance config); the textproto cannot set these.
        encoder_kwargs=SMALL_ENCODER_KWARGS,
        build_size=(129, 129),
        inputs=(("a_129x129", 129, 129), ("b_97x161", 97, 161)),
        calib_batch=4,
        endpoints=True,
        optimizer_ckpt=True,
    ),
    "small_l": dict(
        description=(
            "MaX-DeepLab-L topology at tiny width (COCO 134 outputs, 32 slots): the unmodified "
            "MaX-L config with proto-level width/depth/head changes plus the same keyword "
            "overrides as small"
        ),
        config=CONFIG_L,
        config_edit=small_l_config_edit,
        encoder_kwargs=SMALL_ENCODER_KWARGS,
        build_size=(129, 129),
        inputs=(("a_129x129", 129, 129), ("b_97x161", 97, 161)),
        calib_batch=4,
        endpoints=True,
        optimizer_ckpt=False,
    ),
    "max_l": dict(
        description="MaX-DeepLab-L, COCO (133 classes + void), 128 slots, unmodified config",
        config=CONFIG_L,
        config_edit=None,
        encoder_kwargs=None,
        build_size=(641, 641),
        inputs=(("a_641x641", 641, 641), ("b_513x769", 513, 769)),
        calib_batch=1,  # ~10 GB peak at batch 1
        endpoints=True,
        optimizer_ckpt=False,
    ),
}

# What the same network is in the PyTorch port's MaXDeepLabConfig (cmt_deeplab.models.max_deeplab).
PORT_MODEL = {"max_s": "max-deeplab-s", "small": "max-deeplab-s", "max_l": "max-deeplab-l",
              "small_l": "max-deeplab-l"}
PORT_CONFIG = {
    "max_s": dict(num_classes=133, num_slots=128, max_num_slots=128),
    "max_l": dict(num_classes=133, num_slots=128, max_num_slots=128),
    "small_l": dict(
        num_classes=133, num_slots=32, max_num_slots=32, num_blocks=(1, 3, 1, 1),
        width_multiplier=0.0625, stem_width_multiplier=0.0625, memory_channels=64,
        base_transformer_expansion=0.25, global_ffn_channels=64, transformer_ffn_channels=128,
        pixel_feature_dim=16, semantic_channels=16,
    ),
    "small": dict(
        num_classes=133, num_slots=32, max_num_slots=32, num_blocks=(1, 2, 3, 1),
        width_multiplier=0.0625, stem_width_multiplier=0.0625, memory_channels=64,
        base_transformer_expansion=0.25, global_ffn_channels=64, transformer_ffn_channels=128,
        pixel_feature_dim=16, semantic_channels=16, semantic_projections=(8, 4),
    ),
}


class Timer:
    def __init__(self):
        self.t = {}

    def __call__(self, name):
        timer = self

        class _Ctx:
            def __enter__(self_):
                self_.start = time.perf_counter()

            def __exit__(self_, *exc):
                timer.t[name] = round(time.perf_counter() - self_.start, 2)
                print(f"  [{name}] {timer.t[name]:.1f}s", flush=True)

        return _Ctx()


def read_config(src: str, config_file: str, edit, crop) -> config_pb2.ExperimentOptions:
    with tf.io.gfile.GFile(os.path.join(src, config_file)) as f:
        config = text_format.Parse(f.read(), config_pb2.ExperimentOptions())
    if edit is not None:
        edit(config)
    if crop is not None:
        # Only the ASPP pooling size and our build shape depend on it: deeplab2 sets the ASPP
        # pool to the train crop at stride 16, i.e. global pooling at that crop.
        config.train_dataset_options.crop_size[:] = list(crop)
        config.eval_dataset_options.crop_size[:] = list(crop)
    return config


def bn_layer_of(config):
    """The bn_layer partial exactly as DeepLab.__init__ makes it."""
    so = config.trainer_options.solver_options
    cls = (tf.keras.layers.experimental.SyncBatchNormalization if so.use_sync_batchnorm
           else tf.keras.layers.BatchNormalization)
    return functools.partial(cls, momentum=so.batchnorm_momentum, epsilon=so.batchnorm_epsilon)


def build_model(config, encoder_kwargs, size):
    """deeplab2's DeepLab, built like train_lib.build_deeplab_model (Keras Input, training=False)."""
    model = deeplab.DeepLab(config, dataset.MAP_NAME_TO_DATASET_INFO[DATASET])
    if encoder_kwargs:
        # Same call as builder.create_resnet_encoder, with extra instance-config overrides.
        bo = config.model_options.backbone
        kwargs = copy.deepcopy(encoder_kwargs)
        block_group_config = axial_resnet_instances.override(
            {
                "use_squeeze_and_excite": bo.use_squeeze_and_excite,
                "drop_path_keep_prob": bo.drop_path_keep_prob,
                "drop_path_schedule": bo.drop_path_schedule,
                "use_sac_beyond_stride": bo.use_sac_beyond_stride,
            },
            kwargs.pop("block_group_config", {}),
        )
        model._encoder = axial_resnet_instances.get_model(  # replaced before any build
            bo.name,
            output_stride=bo.output_stride,
            stem_width_multiplier=bo.stem_width_multiplier,
            width_multiplier=bo.backbone_width_multiplier,
            backbone_layer_multiplier=bo.backbone_layer_multiplier,
            block_group_config=block_group_config,
            bn_layer=bn_layer_of(config),
            conv_kernel_weight_decay=config.trainer_options.solver_options.weight_decay / 2,
            **kwargs,
        )
    model(tf.keras.Input(list(size) + [3]), training=False)
    return model


def checkpoint_items(model):
    """The object graph of train_lib.run_experiment: global_step + model.checkpoint_items."""
    # orbit.utils.create_global_step()
    global_step = tf.Variable(
        0, dtype=tf.int64, name="global_step", trainable=False,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    items = dict(global_step=global_step)
    items.update(model.checkpoint_items)
    return items


def _is_bn(layer):
    return hasattr(layer, "moving_mean") and hasattr(layer, "moving_variance") and hasattr(
        layer, "momentum")


def randomize(model, seed):
    """Seeded re-draw of the weights deeplab2 initialises to constants (see module docstring).

    BN gammas that deeplab2 starts at 0 (the last BN of each residual branch: conv3_bn,
    memory_conv3_bn, memory_ffn_conv2_bn, pixel_conv3_bn) get U(0.05, 0.15): small residual
    branches, as in a trained ResNet, keep the random network well conditioned. Measured on
    MaX-S at 641 (relative output change for a ~1e-6 input change): all gammas U(0.5, 1.5) or
    residual U(0.1, 0.3): 3e-2 .. 1 (logits in the hundreds); residual U(0.05, 0.15): ~1e-4.
    """
    rng = np.random.default_rng(seed)
    classifier_kernels = set()
    dec = getattr(model, "_decoder", None)  # None for a bare encoder (backbones variant)
    if dec is not None:
        classifier_kernels = {
            id(dec._auxiliary_semantic_head.final_conv.kernel),
            id(dec._pixel_space_head.final_conv.kernel),
            id(dec._transformer_class_head._conv.kernel),
        }
    counts = {}
    for v in model.variables:
        name = v.name
        shape = tuple(v.shape)
        if "moving_mean" in name or "moving_variance" in name:
            continue
        if name.endswith("gamma:0") and not v.numpy().any():
            val, kind = rng.uniform(0.05, 0.15, shape), "residual_gamma"
        elif name.endswith("gamma:0"):
            val, kind = rng.uniform(0.5, 1.0, shape), "gamma"
        elif name.endswith("beta:0"):
            val, kind = rng.normal(0.0, 0.1, shape), "beta"
        elif name.endswith("bias:0"):
            val, kind = rng.normal(0.0, 0.2, shape), "bias"
        elif id(v) in classifier_kernels:
            fan_in = int(np.prod(shape[:-1]))
            val, kind = rng.normal(0.0, fan_in ** -0.5, shape), "classifier_kernel"
        else:
            continue
        v.assign(val.astype(v.dtype.as_numpy_dtype))
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def calibrate(model, images):
    """Training-mode forward with BN momentum 0: moving stats := batch statistics."""
    layers = list(model._flatten_layers())
    bns = [layer for layer in layers if _is_bn(layer)]
    groups = [layer for layer in layers if isinstance(layer, axial_block_groups.BlockGroup)]
    drops = [layer for layer in layers if isinstance(layer, tf.keras.layers.Dropout)]
    saved = ([bn.momentum for bn in bns], [list(g._drop_path_keep_prob) for g in groups],
             [d.rate for d in drops])
    before = [bn.moving_mean.numpy().copy() for bn in bns]
    try:
        for bn in bns:
            bn.momentum = 0.0
        for g in groups:
            g._drop_path_keep_prob = [1.0] * len(g._drop_path_keep_prob)
        for d in drops:
            d.rate = 0.0
        train_out = model(images, training=True)
    finally:
        for bn, m in zip(bns, saved[0], strict=True):
            bn.momentum = m
        for g, p in zip(groups, saved[1], strict=True):
            g._drop_path_keep_prob = p
        for d, r in zip(drops, saved[2], strict=True):
            d.rate = r
    changed = sum(int(not np.array_equal(b, bn.moving_mean.numpy()))
                  for b, bn in zip(before, bns, strict=True))
    return len(bns), changed, train_out


def noise_images(rng, n, h, w):
    """Deterministic RGB noise, integer values 0..255 as float32 (uniform per pixel/channel).

    Plain noise rather than image-like (multi-octave) noise on purpose: every noise image has
    the same deep-feature statistics, so BN statistics calibrated on a few of them hold for the
    test inputs. With smooth random images the per-image contrast varies and MaX-S (22 attention
    layers) drifted to logits in the thousands on a new image.
    """
    return rng.integers(0, 256, size=(n, h, w, 3)).astype(np.float32)


def make_images(seed, specs):
    rng = np.random.default_rng(seed)
    return {tag: noise_images(rng, 1, h, w) for tag, h, w in specs}


def variable_key_map(root_items, model):
    """Checkpoint key for each model variable, by walking the object graph breadth-first
    (the order in which the checkpoint names shared objects)."""
    ckpt = tf.train.Checkpoint(**root_items)  # keep a reference: the view holds a weakref
    view = tf.train.TrackableView(ckpt)
    root = view.root
    paths = {id(root): []}
    queue = [root]
    while queue:
        obj = queue.pop(0)
        for name, child in view.children(obj).items():
            if id(child) in paths:
                continue
            paths[id(child)] = paths[id(obj)] + [name]
            queue.append(child)

    def esc(n):
        return n.replace(".", "..").replace("/", ".S")

    rows = []
    for v in model.variables:
        p = paths.get(id(v))
        if p is None:
            rows.append((None, v.name, tuple(v.shape)))
        else:
            rows.append(("/".join(esc(x) for x in p) + "/.ATTRIBUTES/VARIABLE_VALUE", v.name,
                         tuple(v.shape)))
    return rows


def digest(a):
    return tuple(a.shape), str(a.dtype), hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def stats(a):
    a = np.asarray(a, dtype=np.float64)
    return dict(shape=list(a.shape), mean=float(a.mean()), std=float(a.std()),
                min=float(a.min()), max=float(a.max()))


def save_optimizer_ckpt(items, model, config, directory):
    """Emulated training checkpoint: + optimizer and backbone_optimizer with legacy Adam slots.

    deeplab2's Trainer uses tf.keras.optimizers.Adam; checkpoints written with TF < 2.11 (the
    released model zoo) use the legacy optimizer, whose slots appear as
    ``<var key>/.OPTIMIZER_SLOT/<optimizer>/{m,v}``. The variable split follows
    Trainer._apply_gradients_to_optimizers (runner_utils.check_if_variable_in_backbone).
    """
    from deeplab2.trainer import runner_utils

    so = config.trainer_options.solver_options
    encoder = model.checkpoint_items["encoder"]
    enc_names = [x.name for x in encoder.trainable_variables]
    name = config.model_options.backbone.name
    back, rest = [], []
    for v in model.trainable_variables:
        (back if runner_utils.check_if_variable_in_backbone(v, name, enc_names) else rest).append(v)
    sched = tf.keras.optimizers.schedules.PolynomialDecay(
        so.base_learning_rate, so.training_number_of_steps, so.poly_end_learning_rate,
        power=so.poly_learning_power)
    opt = tf.keras.optimizers.legacy.Adam(learning_rate=sched)
    bopt = tf.keras.optimizers.legacy.Adam(learning_rate=sched)
    opt._create_all_weights(rest)
    bopt._create_all_weights(back)
    full = dict(items, optimizer=opt, backbone_optimizer=bopt)
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(**full), directory, max_to_keep=1)
    path = mgr.save(checkpoint_number=items["global_step"])
    return path, len(back), len(rest)


def run_variant(name, spec, args):
    out = os.path.join(os.path.expanduser(args.out), name)
    os.makedirs(out, exist_ok=True)
    timer = Timer()
    meta = dict(variant=name, description=spec["description"], seed=args.seed,
                randomized=not args.no_randomize, tf_version=tf.__version__,
                python=platform.python_version())
    try:
        meta["deeplab2_commit"] = subprocess.run(
            ["git", "-C", os.path.join(args.deeplab2_src, "deeplab2"), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        meta["deeplab2_commit"] = None
    print(f"== {name}: {spec['description']}", flush=True)
    t_all = time.perf_counter()

    config = read_config(args.deeplab2_src, spec["config"], spec["config_edit"],
                         spec["build_size"])
    with open(os.path.join(out, "config.textproto"), "w") as f:
        f.write(text_format.MessageToString(config))
    meta["config_file"] = spec["config"]
    meta["encoder_kwargs"] = spec["encoder_kwargs"]
    meta["port_model"] = PORT_MODEL[name]
    meta["port_config"] = PORT_CONFIG[name]

    # (a) build with a fixed TF seed.
    tf.keras.utils.set_random_seed(args.seed)
    with timer("build"):
        model = build_model(config, spec["encoder_kwargs"], spec["build_size"])
    meta["num_variables"] = len(model.variables)
    meta["num_trainable_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    meta["num_params_all"] = int(sum(np.prod(v.shape) for v in model.variables))
    meta["params_per_checkpoint_item"] = {
        k: int(sum(np.prod(v.shape) for v in o.variables))
        for k, o in model.checkpoint_items.items()}

    # Randomise + calibrate BN statistics.
    if not args.no_randomize:
        with timer("randomize"):
            meta["randomized_counts"] = randomize(model, args.seed + 1)
        calib = noise_images(np.random.default_rng(args.seed + 2), spec["calib_batch"],
                             *spec["build_size"])
        with timer("calibrate"):
            n_bn, changed, train_out = calibrate(model, tf.constant(calib))
        meta["calibration"] = dict(batch=int(calib.shape[0]), size=list(spec["build_size"]),
                                   bn_layers=n_bn, bn_layers_updated=changed)
        # Sanity: eval on the calibration batch ~ the training-mode pass that set the stats.
        with timer("calib_check"):
            ev = model(tf.constant(calib), training=False)
        rel = {}
        for k in (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                  common.PRED_TRANSFORMER_CLASS_LOGITS_KEY):
            a, b = train_out[k].numpy(), ev[k].numpy()
            rel[k] = float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12))
        meta["calibration"]["eval_vs_train_max_rel_diff"] = rel
        print("  calib eval-vs-train rel diff", rel, flush=True)
        del train_out, ev

    # (c) checkpoint as train_lib/Orbit: tf.train.Checkpoint(global_step, **checkpoint_items)
    items = checkpoint_items(model)
    ckpt_dir = os.path.join(out, "ckpt")
    with timer("save_ckpt"):
        mgr = tf.train.CheckpointManager(tf.train.Checkpoint(**items), ckpt_dir, max_to_keep=1)
        prefix = mgr.save(checkpoint_number=items["global_step"])
    meta["checkpoint_prefix"] = os.path.relpath(prefix, out)
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    listed = tf.train.list_variables(prefix)
    with open(os.path.join(out, "variables.txt"), "w") as f:
        f.write(f"# tf.train.list_variables({meta['checkpoint_prefix']}): "
                "key<TAB>shape<TAB>dtype\n")
        for key, shape in listed:
            f.write(f"{key}\t{list(shape)}\t{dtypes[key].name}\n")
    meta["checkpoint_num_keys"] = len(listed)
    meta["checkpoint_top_level"] = sorted({k.split("/")[0] for k, _ in listed})
    rows = variable_key_map(items, model)
    listed_keys = {k for k, _ in listed}
    unmapped = [r for r in rows if r[0] is None or r[0] not in listed_keys]
    meta["variables_map_unresolved"] = len(unmapped)
    with open(os.path.join(out, "variables_map.tsv"), "w") as f:
        f.write("checkpoint_key\tkeras_name\tshape\n")
        for key, kname, shape in rows:
            f.write(f"{key}\t{kname}\t{list(shape)}\n")
    # Digests, not copies: MaX-L's weights are 1.8 GB.
    saved_list = [digest(v.numpy()) for v in model.variables]
    ckpt_size = sum(os.path.getsize(os.path.join(ckpt_dir, f)) for f in os.listdir(ckpt_dir))
    meta["checkpoint_bytes"] = ckpt_size

    if spec["optimizer_ckpt"]:
        with timer("save_ckpt_with_optimizer"):
            opath, nb, nr = save_optimizer_ckpt(
                items, model, config, os.path.join(out, "ckpt_with_optimizer"))
        meta["checkpoint_with_optimizer"] = dict(prefix=os.path.relpath(opath, out),
                                                 backbone_vars=nb, other_vars=nr)
        with open(os.path.join(out, "variables_with_optimizer.txt"), "w") as f:
            for key, shape in tf.train.list_variables(opath):
                f.write(f"{key}\t{list(shape)}\n")
    del model, items

    # (b, d) inputs; each run on a fresh model built for that input size, restored from ckpt.
    images = make_images(args.seed, spec["inputs"])
    np.savez(os.path.join(out, "inputs.npz"), **images)
    meta["inputs"] = {}
    for tag, h, w in spec["inputs"]:
        print(f"  -- input {tag}", flush=True)
        cfg = read_config(args.deeplab2_src, spec["config"], spec["config_edit"], (h, w))
        with timer(f"build_{tag}"):
            m = build_model(cfg, spec["encoder_kwargs"], (h, w))
        status = tf.train.Checkpoint(**m.checkpoint_items).read(prefix)
        status.assert_existing_objects_matched()
        status.expect_partial()
        # Every variable restored, and identical to the saved model's (same build order).
        assert len(m.variables) == len(saved_list), (len(m.variables), len(saved_list))
        for v, s in zip(m.variables, saved_list, strict=True):
            assert digest(v.numpy()) == s, v.name
        x = tf.constant(images[tag])
        with timer(f"forward_{tag}"):
            full = m(x, training=False)  # DeepLab.call: /127.5 - 1, encoder, decoder, post-proc.
        with timer(f"endpoints_{tag}"):
            endpoints = m._encoder(x / 127.5 - 1.0, training=False)
            raw_direct = m._decoder(endpoints, training=False)
        raw = {k: full[k].numpy() for k in RAW_KEYS if k in full}
        # Conditioning: relative output change for an input change of N(0, 1e-4) on the
        # [0, 255] scale (~1e-6 after normalisation) -- a floor for cross-framework tolerance.
        noise = np.random.default_rng(99).normal(0.0, 1e-4, images[tag].shape)
        with timer(f"sensitivity_{tag}"):
            pert = m(tf.constant(images[tag] + noise.astype(np.float32)), training=False)
        sensitivity = {k: float(np.abs(raw[k] - pert[k].numpy()).max()
                                / (np.abs(raw[k]).max() + 1e-12)) for k in raw}
        del pert
        post = {k: v.numpy() for k, v in full.items() if k not in RAW_KEYS}
        # The decoder output before post-processing equals DeepLab.call's entries.
        agree = {k: float(np.abs(raw[k] - raw_direct[k].numpy()).max())
                 for k in raw_direct if k in raw}
        np.savez(os.path.join(out, f"raw_{tag}.npz"), **raw)
        np.savez(os.path.join(out, f"post_{tag}.npz"), **post)
        # With random weights no slot reaches the 0.7 class confidence, so the config's
        # panoptic_pred is all void. Also run deeplab2's own post-processor with every
        # threshold and area limit at 0, which assigns every pixel (a non-trivial reference).
        cfg_p = copy.deepcopy(cfg)
        eo = cfg_p.evaluator_options
        eo.transformer_class_confidence_threshold = 0.0
        eo.pixel_confidence_threshold = 0.0
        eo.thing_area_limit = 0
        eo.stuff_area_limit = 0
        pp = post_processor_builder.get_post_processor(
            cfg_p, dataset.MAP_NAME_TO_DATASET_INFO[DATASET])
        permissive = pp({k: full[k] for k in (common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                                               common.PRED_TRANSFORMER_CLASS_LOGITS_KEY)})
        permissive = {k: v.numpy() for k, v in permissive.items()}
        np.savez(os.path.join(out, f"post_permissive_{tag}.npz"), **permissive)
        if spec["endpoints"]:
            np.savez(os.path.join(out, f"endpoints_{tag}.npz"),
                     **{k: endpoints[k].numpy() for k in ENDPOINT_KEYS if k in endpoints})
        meta["inputs"][tag] = dict(
            shape=[1, h, w, 3], raw={k: stats(v) for k, v in raw.items()},
            post={k: dict(shape=list(v.shape), dtype=str(v.dtype),
                          num_unique=int(np.unique(v).size)) for k, v in post.items()},
            post_permissive={k: dict(shape=list(v.shape), dtype=str(v.dtype),
                                     num_unique=int(np.unique(v).size))
                             for k, v in permissive.items()},
            endpoints={k: list(endpoints[k].shape) for k in ENDPOINT_KEYS if k in endpoints},
            direct_decoder_vs_model_call_max_abs_diff=agree,
            aspp_pool_size=list(cfg.train_dataset_options.crop_size),
            sensitivity_max_rel_change_for_input_noise_1e_4=sensitivity,
        )
        del m, full, endpoints, raw_direct

    meta["timings_s"] = timer.t
    meta["total_s"] = round(time.perf_counter() - t_all, 1)
    meta["artefact_bytes"] = {
        f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out))
        if os.path.isfile(os.path.join(out, f))}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, default=str)
    print(f"== {name} done in {meta['total_s']}s -> {out}", flush=True)
    return meta


# --- ImageNet backbones ----------------------------------------------------------------------

#: deeplab2 encoder instances (axial_resnet_instances.get_model names) at tiny widths, and the
#: model of ours each is converted into. ``layouts``: how the checkpoint names the encoder --
#: ``deeplab2`` (``encoder/...``, as train_lib restores an initial_checkpoint) and
#: ``model_garden`` (``backbone/_encoder/...``, which runner_utils.maybe_load_checkpoint also
#: accepts: TF Model Garden's trainer wraps the encoder so).
BACKBONES = {
    "max_deeplab_s_backbone": dict(
        kwargs=dict(width_multiplier=0.0625, stem_width_multiplier=0.0625),
        layouts=("deeplab2", "model_garden"),
        port_model="cmt-deeplab-s",
        port_config=dict(width_multiplier=0.0625, stem_width_multiplier=0.0625),
    ),
    "max_deeplab_l_backbone": dict(
        # MaX-L's backbone includes one stacked decoder (stride 16 -> 4 -> 16).
        kwargs=dict(width_multiplier=0.03125, stem_width_multiplier=0.0625,
                    backbone_layer_multiplier=0.5),
        layouts=("deeplab2",),
        port_model="max-deeplab-l",
        port_config=dict(width_multiplier=0.03125, stem_width_multiplier=0.0625,
                         num_blocks=(1, 3, 1, 1), memory_channels=64,
                         base_transformer_expansion=0.25, global_ffn_channels=64,
                         transformer_ffn_channels=128, pixel_feature_dim=16,
                         semantic_channels=16, num_slots=8),
    ),
    "resnet50": dict(
        kwargs=dict(width_multiplier=0.0625, stem_width_multiplier=0.0625),
        layouts=("deeplab2",),
        port_model="cmt-deeplab-r50",
        port_config=dict(width_multiplier=0.0625, stem_width_multiplier=0.0625),
    ),
}
BACKBONE_INPUT = ("a_65x97", 65, 97)


def run_backbones(args):
    """Each ImageNet encoder at a tiny width: randomised, BN-calibrated, saved in each layout,
    with its endpoints on one input."""
    root = os.path.join(os.path.expanduser(args.out), "backbones")
    tag, h, w = BACKBONE_INPUT
    image = make_images(args.seed, [BACKBONE_INPUT])[tag]
    for name, spec in BACKBONES.items():
        out = os.path.join(root, name)
        os.makedirs(out, exist_ok=True)
        print(f"== backbone {name}", flush=True)
        tf.keras.utils.set_random_seed(args.seed)
        encoder = axial_resnet_instances.get_model(
            name, output_stride=16, bn_layer=functools.partial(
                tf.keras.layers.BatchNormalization, momentum=0.99, epsilon=1e-3),
            **spec["kwargs"])
        encoder(tf.keras.Input([h, w, 3]), training=False)
        meta = dict(instance=name, kwargs=spec["kwargs"], port_model=spec["port_model"],
                    port_config=spec["port_config"], seed=args.seed, tf_version=tf.__version__,
                    num_params=int(sum(np.prod(v.shape) for v in encoder.variables)))
        if not args.no_randomize:
            meta["randomized_counts"] = randomize(encoder, args.seed + 1)
            calib = noise_images(np.random.default_rng(args.seed + 2), 4, h, w)
            n_bn, changed, _ = calibrate(encoder, tf.constant(calib / 127.5 - 1.0))
            meta["calibration"] = dict(bn_layers=n_bn, bn_layers_updated=changed)
        meta["checkpoints"] = {}
        for layout in spec["layouts"]:
            if layout == "deeplab2":
                root_items = dict(encoder=encoder)
            else:
                root_items = dict(backbone=tf.train.Checkpoint(_encoder=encoder))
            directory = os.path.join(out, "ckpt" if layout == "deeplab2" else f"ckpt_{layout}")
            mgr = tf.train.CheckpointManager(tf.train.Checkpoint(**root_items), directory,
                                             max_to_keep=1)
            prefix = mgr.save(checkpoint_number=0)
            meta["checkpoints"][layout] = os.path.relpath(prefix, out)
            with open(os.path.join(out, f"variables_{layout}.txt"), "w") as f:
                for key, shape in tf.train.list_variables(prefix):
                    f.write(f"{key}\t{list(shape)}\n")
        np.savez(os.path.join(out, "inputs.npz"), **{tag: image})
        endpoints = encoder(tf.constant(image / 127.5 - 1.0), training=False)
        saved = {k: v.numpy() for k, v in endpoints.items() if len(v.shape) == 4}
        np.savez(os.path.join(out, "endpoints.npz"), **saved)
        meta["endpoints"] = {k: list(v.shape) for k, v in saved.items()}
        with open(os.path.join(out, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, default=str)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=[*VARIANTS, "backbones", "all"], default="all")
    p.add_argument("--out", default="deeplab2_reference")
    p.add_argument("--deeplab2-src", default=DEEPLAB2_SRC,
                   help="folder that contains the deeplab2 package (with compiled *_pb2.py); "
                   "for the config file only, set DEEPLAB2_SRC or PYTHONPATH for the imports")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-randomize", action="store_true")
    args = p.parse_args()
    names = ["small", "small_l", "backbones", "max_s", "max_l"] if args.variant == "all" \
        else [args.variant]
    t = time.perf_counter()
    for n in names:  # small first: fails fast
        if n == "backbones":
            run_backbones(args)
        else:
            run_variant(n, VARIANTS[n], args)
    print(f"all done in {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
