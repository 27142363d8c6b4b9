"""Stage 7, publish: ``export`` (a checkpoint as a Hugging Face model directory),
``model_card`` (its README.md) and ``push`` (upload to the Hugging Face Hub)."""
