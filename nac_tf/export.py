"""SavedModel export of a pretrained encoder and projection head, with named signatures.

An export holds the online encoder f and projection head g of a run (no inference network,
momentum copies or queue) and serves raw uint8 images of any size:

    features (= serving_default)  uint8 [N, H, W, 3] -> {"features": h, float32 [N, F]}
    hash_codes                    uint8 [N, H, W, 3] -> {"hash_codes": uint8 [N, ceil(D/8)]}
                                  the bits 1[a > 0] packed as np.packbits(a > 0, axis=1)
    codes                         uint8 [N, H, W, 3] -> {"codes": z = tanh(a), float32 [N, D]}

Preprocessing is the evaluation pipeline's (`make_eval_dataset`): x / 255, and a bilinear,
anti-aliased resize (clipped to [0, 1]) when H x W is not the training size; the per-channel
normalisation is part of the encoder. BatchNorm runs in inference mode.

The module also carries `image_size`, `code_dim`, `feature_dim`, `method`, `input_mean`,
`input_std` (variables) and the asset `assets/nac_tf_export.json` with the same facts plus the
run's input statistics, `codes_from` and the model's fingerprint `weights_sha256`
(`weights_fingerprint`), readable without TensorFlow.

Where the codes come from (`codes_from`): the projection head's output a for the methods that
have one (NAC, NAC-MQ, SimCLR, MoCo-v2: the vector their objective scores); the features
themselves, a = h, for a method without a projection head whose objective scores h directly
(`TwoViewMethod.CODES_FROM_FEATURES`: AMDIM, whose phi_1 is the identity, so its NCE scores
f_1 = h). For AMDIM h is the output of a BatchNorm (the authors' encoder ends with one), so
every bit sgn(h_d) is centred by its batch statistics; D = h's width (nrkhs).

Wrong inputs, as observed with TensorFlow 2.21:
- a signature (`loaded.signatures["features"](images=t)`, TF Serving) refuses a non-uint8
  tensor ("expected to be a uint8 tensor but is a float tensor"); a wrong rank, channel count
  or an empty image fails the in-graph check "images must be uint8 [N, H, W, 3]; received
  shape: ...".
- the restored functions (`loaded.features(x)`) refuse a tf.Tensor of another dtype or shape
  with a long TypeError that prints the whole input, and silently CAST a NumPy array of
  another dtype to uint8 (float images in [0, 1] become zeros). Python users should call
  `load_exported_model(export_dir)`, whose methods check the array first and raise a short
  ValueError.
"""
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from nac_tf.config import ConfigError
from nac_tf.errors import cannot_write, failure_cause
from nac_tf.data.pipeline import evaluation_images
from nac_tf.run_directory import check_export_dir, restore_run

SIGNATURES = ("features", "serving_default", "hash_codes", "codes")
METADATA_FILE = "nac_tf_export.json"
IMAGE_FORMAT = "images must be uint8 [N, H, W, 3]"
IMAGE_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")


def pack_bits(bits):
    """Packs {0, 1} bits [N, D] into uint8 [N, ceil(D/8)] exactly like np.packbits(axis=1).

    Big-endian within a byte: bit d goes to byte d // 8 at weight 2^(7 - d % 8); a last
    partial byte is padded with zeros, as NumPy does.
    """
    bits = tf.cast(bits, tf.int32)
    dim = bits.shape[-1]
    if dim is None:
        raise ValueError("pack_bits needs a static code dimension")
    padding = -dim % 8
    if padding:
        bits = tf.pad(bits, [[0, 0], [0, padding]])
    groups = tf.reshape(bits, [-1, (dim + padding) // 8, 8])
    weights = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], tf.int32)
    return tf.cast(tf.reduce_sum(groups * weights, axis=-1), tf.uint8)


class ExportModule(tf.Module):
    """tf.Module serving an encoder and projection head on raw uint8 images.

    `projection_head` None: the codes are the signs of the features (a = h, D = F)."""

    def __init__(self, encoder, projection_head, image_size, method_name,
                 input_statistics=None, name="nac_tf_export"):
        super().__init__(name=name)
        self.encoder = encoder
        self.projection_head = projection_head
        self._size = int(image_size)
        if projection_head is None:
            feature_dim = code_dim = int(encoder.output_shape[-1])
        else:
            # The head reads h, so its input width is the feature dimension F.
            feature_dim = int(projection_head.hidden_dense.kernel.shape[0])
            code_dim = int(projection_head.output_dim)
        # Variables (not Python attributes) so they survive saving and loading.
        self.image_size = tf.Variable(self._size, trainable=False, name="image_size")
        self.feature_dim = tf.Variable(feature_dim, trainable=False, name="feature_dim")
        self.code_dim = tf.Variable(code_dim, trainable=False, name="code_dim")
        self.method = tf.Variable(method_name, trainable=False, name="method")
        statistics = input_statistics or {}
        self.input_mean = tf.Variable(np.asarray(statistics.get("mean", []), np.float32),
                                      trainable=False, name="input_mean")
        self.input_std = tf.Variable(np.asarray(statistics.get("std", []), np.float32),
                                     trainable=False, name="input_std")
        # A JSON string, not a dict: tf.Module would wrap a dict attribute for tracking.
        self._metadata_json = json.dumps({
            "method": method_name, "image_size": self._size, "feature_dim": feature_dim,
            "code_dim": code_dim, "hash_code_bytes": -(-code_dim // 8),
            "input_statistics": statistics,
            "codes_from": "features" if projection_head is None else "projection_head",
            "signatures": {"features": "features", "serving_default": "features",
                           "hash_codes": "hash_codes", "codes": "codes"}})

    @property
    def metadata(self):
        """method, image_size, feature_dim, code_dim, hash_code_bytes, input_statistics."""
        return json.loads(self._metadata_json)

    def _preprocess(self, images):
        # A signature call (TF Serving, `loaded.signatures[...]`) checks the dtype but not
        # the shape against [None, None, None, 3], and TensorFlow folds tf.rank / tf.size of
        # the shape into the declared rank 4. So the check pads the runtime shape with zeros:
        # dims 3 and 4 read (3, 0) only for rank 4 with 3 channels. ensure_shape catches the
        # one case that slips through (rank 5 with an empty last dimension).
        tf.debugging.assert_type(images, tf.uint8, message=IMAGE_FORMAT)
        shape = tf.shape(images)
        padded = tf.concat([shape, tf.zeros([2], tf.int32)], axis=0)
        checks = [
            tf.debugging.Assert(
                tf.reduce_all(tf.equal(padded[3:5], [3, 0])),
                [IMAGE_FORMAT + "; received shape:", shape], summarize=8),
            tf.debugging.Assert(
                tf.reduce_all(padded[1:3] > 0),
                [IMAGE_FORMAT + " with H, W > 0; received shape:", shape], summarize=8),
        ]
        with tf.control_dependencies(checks):
            images = tf.ensure_shape(images, [None, None, None, 3])
            shape = tf.shape(images)
        # The evaluation pipeline's preprocessing, so exported features equal its features.
        images = evaluation_images(images, self._size)
        return tf.ensure_shape(images, [None, self._size, self._size, 3])

    def _features(self, images):
        h = self.encoder(self._preprocess(images), training=False)
        return tf.cast(h, tf.float32)  # float32 even for a mixed-precision encoder

    def pre_activations(self, images):
        """a float32 [N, D], the head's outputs (or the features h without a head) whose
        signs are the hash codes. Not a signature: the trainer traces it for its
        TensorBoard histogram."""
        a = self.encoder(self._preprocess(images), training=False)
        if self.projection_head is not None:
            a = self.projection_head(a, training=False)
        return tf.cast(a, tf.float32)

    @tf.function(input_signature=[IMAGE_SPEC])
    def features(self, images):
        """{"features": h float32 [N, F]} of uint8 images [N, H, W, 3]."""
        return {"features": self._features(images)}

    @tf.function(input_signature=[IMAGE_SPEC])
    def hash_codes(self, images):
        """{"hash_codes": uint8 [N, ceil(D/8)]}: np.packbits(a > 0, axis=1)."""
        return {"hash_codes": pack_bits(self.pre_activations(images) > 0)}

    @tf.function(input_signature=[IMAGE_SPEC])
    def codes(self, images):
        """{"codes": z = tanh(a) float32 [N, D]}."""
        return {"codes": tf.tanh(self.pre_activations(images))}

    def signature_map(self):
        """The signature map for tf.saved_model.save."""
        return {"serving_default": self.features, "features": self.features,
                "hash_codes": self.hash_codes, "codes": self.codes}


def weights_fingerprint(module):
    """The model's fingerprint: sha256 (hex) over what decides its codes: the image size,
    where the codes come from and the code width, then every weight of the encoder and then
    of the projection head, in layer order (dtype, shape and bytes of each).

    A run exported, restored from its run directory or wrapped in memory has one fingerprint;
    a hash index records it and refuses codes of any other model.
    """
    metadata = module.metadata
    digest = hashlib.sha256(json.dumps(
        {key: metadata[key] for key in ("image_size", "codes_from", "code_dim")},
        sort_keys=True).encode())
    networks = [module.encoder] + ([module.projection_head]
                                   if module.projection_head is not None else [])
    for network in networks:
        for weight in network.weights:
            value = np.ascontiguousarray(weight.numpy())
            digest.update(f"{value.dtype.str}{list(value.shape)}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


def build_export_module(method, image_size, input_statistics=None):
    """An ExportModule over `method`'s online encoder and projection head.

    NAC, NAC-MQ, SimCLR and MoCo-v2 have a `projection_head`; a method whose codes are its
    features (`CODES_FROM_FEATURES`, AMDIM) exports its encoder alone. Only the online
    networks are exported (no momentum copies, inference network or AMDIM's phi_5 / phi_7).
    """
    head = getattr(method, "projection_head", None)
    if head is None and not getattr(method, "CODES_FROM_FEATURES", False):
        raise ValueError(f"method {method.name!r} has no projection_head to export")
    return ExportModule(method.encoder, head, image_size, method.name, input_statistics)


def export_saved_model(model_dir, export_dir, checkpoint=None, overwrite=False):
    """Exports the run in `model_dir` (its newest intact checkpoint, or the given one:
    `restore_run`) to `export_dir`.

    Refuses a non-empty `export_dir` unless `overwrite`; even then only a previous
    SavedModel is replaced, never another directory. The export is written beside
    `export_dir` first and moved into place, so a failure leaves no half-written export.
    Returns the export path. ConfigError("checkpoint") for a checkpoint that does not fit
    the run or cannot be read, ConfigError("export_dir") when the export cannot be written.
    """
    export_dir = os.path.abspath(export_dir)
    check_export_dir(export_dir, overwrite)
    _, statistics, method, checkpoint = restore_run(model_dir, checkpoint)
    module = build_export_module(method, statistics["image_size"], statistics)

    parent = os.path.dirname(export_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    except OSError as error:  # e.g. the directory became read-only since the check
        raise ConfigError("export_dir", cannot_write(export_dir, error)) from None
    try:
        metadata = dict(module.metadata, model_dir=os.path.abspath(model_dir),
                        checkpoint=os.path.abspath(checkpoint),
                        weights_sha256=weights_fingerprint(module))
        metadata_path = os.path.join(staging, METADATA_FILE)
        with open(metadata_path, "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)
        # An Asset is copied into <export>/assets/ and its path restored on load.
        module.metadata_file = tf.saved_model.Asset(metadata_path)
        saved = os.path.join(staging, "saved_model")
        tf.saved_model.save(module, saved, signatures=module.signature_map())
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)  # empty, or a SavedModel when overwrite (checked above)
        os.replace(saved, export_dir)
    except (OSError, tf.errors.OpError) as error:  # a full disk, a quota, ...
        raise ConfigError("export_dir", cannot_write(export_dir, failure_cause(error))) \
            from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return export_dir


def read_export_metadata(export_dir):
    """The contents of assets/nac_tf_export.json (no TensorFlow needed)."""
    with open(os.path.join(export_dir, "assets", METADATA_FILE)) as f:
        return json.load(f)


class ExportedModel:
    """A loaded export (or an in-memory ExportModule) with input validation, for Python callers.

    The restored functions silently cast a NumPy array of another dtype to uint8 and answer
    a wrong shape with a TypeError that prints the whole input; these methods check the
    array first and raise a short ValueError instead. Wrapping an unsaved `ExportModule`
    (`ExportedModel.from_module`) gives the trainer's own evaluation exactly the code path
    that serves the SavedModel.
    """

    def __init__(self, export_dir=None, module=None, metadata=None):
        if (export_dir is None) == (module is None):
            raise ValueError("give exactly one of export_dir or module")
        self.export_dir = export_dir
        if module is None:
            module = tf.saved_model.load(export_dir)
            metadata = read_export_metadata(export_dir)
        self.module = module
        self.metadata = metadata if metadata is not None else {}

    @property
    def fingerprint(self):
        """The model's fingerprint (`weights_fingerprint`): from the export's metadata, or
        computed from the current weights of an in-memory module. ValueError for an export
        written before nac_tf recorded it (export it again)."""
        if isinstance(self.module, ExportModule):  # its weights may still be changing
            return weights_fingerprint(self.module)
        if "weights_sha256" not in self.metadata:
            raise ValueError(f"the export {self.export_dir!r} has no weights_sha256 in "
                             f"assets/{METADATA_FILE} (written by an older nac_tf); export "
                             "the run again")
        return self.metadata["weights_sha256"]

    @classmethod
    def from_module(cls, module: "ExportModule"):
        """Wraps an in-memory ExportModule (not saved)."""
        return cls(module=module, metadata=module.metadata)

    @classmethod
    def from_method(cls, method, input_statistics=None):
        """Wraps a method in memory (e.g. one trained with `model.fit`, see
        `nac_tf.recipes.method_for_run`) as its export would serve it, without saving.

        The training image size is the encoder's input size; `input_statistics` (the run's
        {"image_size", "mean", "std"}) only goes into the metadata.
        """
        image_size = (input_statistics or {}).get("image_size") or method.encoder.input_shape[1]
        return cls.from_module(build_export_module(method, image_size, input_statistics))

    @staticmethod
    def check_images(images):
        """uint8 [N, H, W, 3] images as a tensor, or ValueError naming what is wrong."""
        dtype = getattr(images, "dtype", None)
        if dtype is None:
            images = np.asarray(images)
            dtype = images.dtype
        try:
            dtype = tf.as_dtype(dtype)
        except TypeError:
            raise ValueError(f"{IMAGE_FORMAT}; got an array of dtype {dtype}") from None
        shape = tuple(images.shape)
        if dtype != tf.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{IMAGE_FORMAT}; got {dtype.name} {list(shape)}"
                             + (" (convert float images in [0, 1] with "
                                "np.round(x * 255).astype(np.uint8))" if dtype.is_floating
                                else ""))
        return tf.convert_to_tensor(images)

    def features(self, images):
        """h float32 [N, F] as a NumPy array."""
        return self.module.features(self.check_images(images))["features"].numpy()

    def hash_codes(self, images):
        """Packed bits uint8 [N, ceil(D/8)] as a NumPy array."""
        return self.module.hash_codes(self.check_images(images))["hash_codes"].numpy()

    def codes(self, images):
        """z = tanh(a) float32 [N, D] as a NumPy array."""
        return self.module.codes(self.check_images(images))["codes"].numpy()


def load_exported_model(export_dir):
    """An ExportedModel over the SavedModel in `export_dir`."""
    return ExportedModel(export_dir)
