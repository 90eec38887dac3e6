"""`PTuningTask`: what every P-tuning task model adds to its keras-hub task."""

import keras

from keras_ptuning.input_validation import check_inputs


class PTuningTask:
    """Mixin for the P-tuning task models, before their keras-hub task class.

    - Calls check the inputs before Keras standardizes them, so errors name
      the argument, the value and our limits.
    - `fit`, `evaluate` and `predict` also take a `keras.utils.PyDataset`
      (such as `keras_ptuning.LengthBucketedDataset`), as core Keras models
      do. Its batches are model-ready, so they go straight to Keras:
      keras-hub's own pipeline takes only arrays and `tf.data` datasets, and
      would run the preprocessor again.
    """

    def __call__(self, inputs, *args, **kwargs):
        check_inputs(inputs, self.backbone.input_names, type(self).__name__)
        return super().__call__(inputs, *args, **kwargs)

    def fit(self, x=None, *args, **kwargs):
        if isinstance(x, keras.utils.PyDataset):
            return keras.Model.fit(self, x, *args, **kwargs)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        if isinstance(x, keras.utils.PyDataset):
            return keras.Model.evaluate(self, x, *args, **kwargs)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        if isinstance(x, keras.utils.PyDataset):
            return keras.Model.predict(self, x, *args, **kwargs)
        return super().predict(x, *args, **kwargs)
