"""The one place that decides which Keras kerasq uses, and how TensorFlow is imported.

tensorflow-model-optimization only works with Keras 2, which ships as ``tf_keras``; every
kerasq module imports ``keras`` and ``tf`` from here, never ``keras`` directly, so the user's
``TF_USE_LEGACY_KERAS`` setting does not matter.

TensorFlow's C++ runtime prints start-up lines (CUDA probing, oneDNN notices) straight to the
stderr file descriptor before Python logging exists. They are captured while TensorFlow is
imported and shown only if the import fails; ``KERASQ_TF_LOGS=1`` lets them through.
"""

from __future__ import annotations

import os
import sys
import tempfile

# Level 2 hides TF's INFO and WARNING lines from the Python side as well.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_tensorflow_quietly():
    if "tensorflow" in sys.modules or os.environ.get("KERASQ_TF_LOGS") == "1":
        import tensorflow  # noqa: F401
        import tf_keras  # noqa: F401
        return
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (e.g. some notebooks)
        import tensorflow  # noqa: F401
        import tf_keras  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), stderr_fd)
        try:
            import tensorflow
            import tf_keras  # noqa: F401

            # Device discovery (CUDA probing) logs too; run it now, while stderr is captured.
            tensorflow.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, stderr_fd)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, stderr_fd)
            os.close(saved)


_import_tensorflow_quietly()

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "keras"]
