from common import *
model, g, inputs, cal, names, tok = minilm()
spec = "quant_weights(format=int4, group=128, act=int8)"
gq = run_pipeline(g, [spec], calibration=cal)
yi = first(interp_run(gq, *inputs))
cm = sf.compile(gq, target="c"); yc = first(cm(*inputs))
import tempfile
with tempfile.TemporaryDirectory() as d:
    yo = first(run_ort(gq, inputs, d))
print("c-interp", rel(yc, yi), "ort-interp", rel(yo, yi), "c-ort", rel(yc, yo))
mask = inputs[names.index("attention_mask")].bool()
d = (yc - yi).abs().amax(-1)
print("per-token maxdiff (C-interp):\n", d)
print("masked-only c-interp", float((yc-yi)[mask].abs().max()/yi[mask].abs().max()), "padded", float((yc-yi)[~mask].abs().max()/yi.abs().max()) if (~mask).any() else None)
# count qlinear
print(sum(1 for n in gq.nodes if n.op=="qlinear"))
