"""Entry point MLflow runs to load the generator pyfunc (models from code: nothing pickled)."""

from mlflow.models import set_model

from cadenza.serving import GeneratorModel

set_model(GeneratorModel())
