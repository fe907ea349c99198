"""One module per tab of the page, each with a build(served, ...) that lays out and wires; model work goes through the
ServedModel or the tab's own non-UI module.

Events run one at a time per group: quick ones (a prediction, a heatmap) in one, heavy ones (many images, teaching,
feature maps) in the other, so that a flood of heavy jobs never holds up a visitor's /classify. The served model's
lock keeps their forward passes (and hooks) apart; heavy jobs take it per batch.
"""

MODEL_QUEUE = "model"
HEAVY_QUEUE = "heavy"

