"""Re-project the latent weights a Loihi-aware checkpoint keeps (``raw_state_dict``) with the current
``snap_to_grid`` and report the projection against its quantised network on the whole test set (what
`revsnn finetune` reports as "after"). Used once for the README: the fine-tuning run of revsresnet-digits
wrote its checkpoint before the quantiser's vThMant floor got its float32 tolerance, and a new run did not fit
the time on the shared cores. The tolerance moves vThMant only where a limit lies within a millionth below an
integer, as a projected model's do, not the latent weights' that the training forward quantised.

    python scripts/loihi_resnap.py runs/revsresnet-digits-loihi/model.pt
"""
import json
import sys

from revsnn.checkpoint import load_checkpoint, load_model
from revsnn.finetune import loihi_report, snap_to_grid
from revsnn.train import TrainOptions, _load_data, resolve_options

path = sys.argv[1]
model, _ = load_model(path)
payload = load_checkpoint(path)
model.load_state_dict(payload["raw_state_dict"])
T = payload["train"]["time_steps"]
print(snap_to_grid(model, T))
opts = TrainOptions(model=payload["config"]["name"], out="/tmp/unused", encoding=payload["train"]["encoding"])
data = _load_data(opts, resolve_options(opts), None)   # the data set only; nothing is written
print(json.dumps(loihi_report(model, T, payload["train"]["encoding"], data)))
