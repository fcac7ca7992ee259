"""The winner of a sweep: selection, verification and export as a Hugging Face model directory."""
