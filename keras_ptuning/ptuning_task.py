"""`PTuningTask`: what every P-tuning task model adds to its keras-hub task."""

import keras

from keras_ptuning.input_validation import check_placeholder_counts


class PTuningTask:
    """Mixin for the P-tuning task models, before their keras-hub task class.

    - Calls check the inputs before Keras standardizes them, so errors name
      the argument, the value and our limits. In slot placement, `fit`,
      `evaluate` and `predict` on arrays check every row's placeholder count
      up front, since compiled steps cannot.
    - `fit`, `evaluate` and `predict` also take a `keras.utils.PyDataset`
      (such as `keras_ptuning.LengthBucketedDataset`), as core Keras models
      do. Its batches are model-ready, so they go straight to Keras:
      keras-hub's own pipeline takes only arrays and `tf.data` datasets, and
      would run the preprocessor again.
    """

    @property
    def model_input_names(self):
        """The names of the model's inputs (the backbone's, by default)."""
        return list(self.backbone.input_names)

    def __call__(self, inputs, *args, **kwargs):
        self.backbone.check_inputs(
            inputs, self.model_input_names, type(self).__name__
        )
        return super().__call__(inputs, *args, **kwargs)

    def _check_array_inputs(self, x):
        if (
            self.backbone.uses_slots
            and isinstance(x, dict)
            and "token_ids" in x
        ):
            check_placeholder_counts(
                x["token_ids"],
                self.backbone.placeholder_id,
                self.backbone.num_virtual_tokens,
            )

    def fit(self, x=None, *args, **kwargs):
        if isinstance(x, keras.utils.PyDataset):
            return keras.Model.fit(self, x, *args, **kwargs)
        self._check_array_inputs(x)
        return super().fit(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        if isinstance(x, keras.utils.PyDataset):
            return keras.Model.evaluate(self, x, *args, **kwargs)
        self._check_array_inputs(x)
        return super().evaluate(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        if isinstance(x, keras.utils.PyDataset):
            return keras.Model.predict(self, x, *args, **kwargs)
        self._check_array_inputs(x)
        return super().predict(x, *args, **kwargs)
