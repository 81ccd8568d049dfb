import sys, time, warnings
from common import *
model, g, inputs, cal, names, tok = minilm()
ref = first(interp_run(g, *inputs))
with torch.no_grad():
    eager = model(**dict(zip(names, inputs)))[0]
print("interp vs eager", rel(ref, eager))
specs = sys.argv[1:] or [
 "quant_weights(format=int8, group=0)",
 "quant_weights(format=int4, group=128)",
 "quant_weights(format=int4, group=128, sym=true)",
 "quant_weights(format=int3, group=128)",
 "quant_weights(format=fp8_e4m3, group=0)",
 "quant_weights(format=fp4_e2m1, group=128)",
 "quant_weights(format=int4, group=128, act=int8)",
]
for s in specs:
    t=time.time()
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            r = full_check(g, [s], inputs, calibration=cal, ref=ref, label=s, mask=inputs[names.index('attention_mask')])
        print(fmt(r), f"t={time.time()-t:.1f}", [str(x.message)[:100] for x in w][:2], flush=True)
    except Exception as e:
        import traceback; traceback.print_exc()
        print("FAIL", s, type(e).__name__, str(e)[:500], flush=True)
