"""Runs one offline job as a torchrun process and saves the network it serves, per rank, before the
job writes its checkpoint (for test_uda_jobs.py): ddp_worker.py JOB FOLDER JOB_ARGS..."""
import sys
from pathlib import Path

import torch

from driftseg.training import adversarial, finetune, seat, self_training

JOBS = {"adversarial": adversarial.main, "seat": seat.main, "self-training": self_training.main}


def main() -> None:
    job_name, folder, *argv = sys.argv[1:]
    write = finetune.finish

    def save_then_write(job, model, *args, **kwargs):
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        torch.save({"parameters": params}, Path(folder) / f"rank{job.ctx.rank}.pt")
        return write(job, model, *args, **kwargs)

    finetune.finish = save_then_write
    JOBS[job_name](argv)


if __name__ == "__main__":
    main()
