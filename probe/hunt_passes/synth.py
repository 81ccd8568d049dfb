"""Synthetic small models x many pass specs."""
import sys, warnings, traceback
from common import *
torch.manual_seed(0)

class MLP(torch.nn.Module):
    def __init__(s, k=100, h=130, n=37, bias=True):
        super().__init__()
        s.ln = torch.nn.LayerNorm(k)
        s.a = torch.nn.Linear(k, h, bias=bias); s.b = torch.nn.Linear(h, n, bias=not bias)
    def forward(s, x):
        return s.b(torch.relu(s.a(s.ln(x))))

class Shared(torch.nn.Module):  # one linear used twice + tied weights
    def __init__(s, k=96):
        super().__init__()
        s.ln = torch.nn.LayerNorm(k)
        s.l = torch.nn.Linear(k, k)
        s.t = torch.nn.Linear(k, k, bias=False); s.t.weight = s.l.weight
    def forward(s, x):
        h = s.ln(x)
        return s.l(torch.relu(s.l(h))) + s.t(h)

def cal_for(shape, n=4):
    return [(torch.randn(*shape),) for _ in range(n)]

MODELS = {
  "mlp3d": (MLP(), (2, 40, 100)),
  "mlp2d_nobias": (MLP(bias=False), (64, 100)),
  "mlp1d": (MLP(), (100,)),
  "shared": (Shared(), (2, 40, 96)),
}
SPECS = sys.argv[1:] or [
 "quant_weights(format=int8, group=0)",
 "quant_weights(format=int4, group=64)",
 "quant_weights(format=int4, group=32, sym=true)",
 "quant_weights(format=int3, group=64)",
 "quant_weights(format=fp8_e4m3, group=64)",
 "quant_weights(format=fp4_e2m1, group=32)",
 "quant_weights(format=int4, group=64, method=awq)",
 "quant_weights(format=int4, group=64, rounding=gptq)",
 "quant_weights(format=int4, group=64, method=awq, rounding=gptq, sequential=true)",
 "quant_weights(format=fp4_e2m1, group=64, method=search)",
 "quant_weights(format=int4, group=64, act=int8)",
 "quant_weights(format=fp4_e2m1, group=64, act_format=fp8_e4m3)",
 "quant_weights(format=int4, group=64, budget=6)",
 "smooth(0.5)",
 "awq_scales(4, 64)",
 "outliertune(bits=8)",
 "w8a8",
]
only = [m for m in MODELS if m in (sys.argv[0:0] or MODELS)]
for mname, (m, shape) in MODELS.items():
    m.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        g = sf.from_torch(m, (x,))
        eager = m(x)
    for s in SPECS:
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                r = full_check(g, [s], (x,), calibration=cal_for(shape), ref=eager, label=f"{mname} {s}")
            print(fmt(r), [str(q.message)[:80] for q in w][:1], flush=True)
        except Exception as e:
            print("FAIL", mname, s, type(e).__name__, str(e)[:400], flush=True)
            if not isinstance(e, sf.ScalefoldError): traceback.print_exc(limit=-4)
