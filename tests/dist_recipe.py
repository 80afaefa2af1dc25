"""train_grpo.py under torchrun, recording on each rank the dtypes the run worked in, written to
OUT/dtypes_rank{r}.json before the final evaluation: the KV caches and the model each cache was filled by (the
rollout copy), the reference's parameters and the trained (master) parameters.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_recipe.py --model ... --out OUT ...
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_grpo  # noqa: E402
from agenticrec import engine  # noqa: E402

seen = {"cache": set(), "rollout_model": set()}
real_cache_init, real_finish = engine.KVCache.__init__, train_grpo.finish


def recording_cache_init(self, model, rows, max_len):
    real_cache_init(self, model, rows, max_len)
    seen["cache"] |= {str(t.dtype) for t in self.k + self.v}
    seen["rollout_model"] |= {str(p.dtype) for p in model.parameters()}


def recording_finish(run):
    dtypes = {k: sorted(v) for k, v in seen.items()}
    dtypes["reference"] = sorted({str(p.dtype) for p in run.ref_model.parameters()})
    dtypes["master"] = sorted({str(p.dtype) for p in run.model.parameters()})
    (run.out / f"dtypes_rank{run.info.rank}.json").write_text(json.dumps(dtypes))
    real_finish(run)


engine.KVCache.__init__ = recording_cache_init
train_grpo.finish = recording_finish
train_grpo.main(sys.argv[1:])
