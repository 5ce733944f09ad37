"""Names the command line, the server and the front ends offer, importable without torch."""

# Input pipelines of the supported model families (resize, normalisation, input size).
PIPELINES = ("sammed2d", "litemedsam", "sam", "medsam")

# Encoder precisions; see `precision` for what each does.
PRECISIONS = ("fp32", "bf16")
