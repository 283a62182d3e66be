"""Training: one loop for every Hugging Face causal LM (HAMT or the matched GPT-2), resumable bit for bit.

``train(params, resume=..., model=..., name=...)`` reads the memmapped tokens of the tokenize stage,
builds the model (``hamt.zoo``), and runs AdamW with warm-up and cosine decay, gradient accumulation,
autocast (fp32 | bf16 | fp16 + GradScaler), optional gradient checkpointing and ``torch.compile``
(eager fallback with a warning), periodic validation and atomic checkpoints. Outputs:

    <train.out_dir>/<name>/step_<N>.pt (+ .sha256)    training checkpoints (newest keep_checkpoints)
    <train.out_dir>/<name>/final/                      the trained model (save_pretrained) + meta.json
    <train.results_dir>/<name>/metrics.json            summary, fallbacks taken, throughput, MFU
    <train.results_dir>/<name>/log.csv                 the series (columns: LOG_COLUMNS)
    <train.results_dir>/<name>/train.log               events: resumes, fallbacks, interruptions

The package, in the order a run uses it:

    cli.py        ``hamt train`` flags (--resume, --force-new, --model, --name) and the exit status
    inputs.py     the checks before any work: output folders, meta.json, token ids < vocab_size
    loop.py       ``train()`` and the ``Trainer``: build, run (holding the folder's lock), one step, log
    optimizer.py  AdamW, decay on matrices only          schedule.py  ``WarmupCosine``
    evaluate.py   validation loss, fidelity, slot use during training (measures: ``hamt.metrics``)
    ladder.py     the fallback ladder: OOM -> smaller micro-batch -> gradient checkpointing -> shorter
                  seq_len; divergence -> roll back, lr x factor (``TrainingFailed`` when exhausted)
    state.py      trainer state <-> checkpoint: what is saved, resume, roll back, the run's identity (file
                  format: hamt.checkpoint)
    signals.py    SIGINT/SIGTERM: checkpoint at the next step boundary, exit 128 + signal
    export.py     the end: ``final/`` (save_pretrained), summary and metrics.json
    logs.py       log.csv, train.log, the progress bar, the optional W&B logger
    faults.py     ``EnvFaults``: fault injection for tests and the flow's demo (``HAMT_FAULTS``)

Reproducibility: a run resumed from a checkpoint (``--resume``) ends with bitwise-identical weights to
an uninterrupted run with the same seed on the CPU (tested), because the checkpoint carries the RNG
states and the data loader's position, and nothing else in the loop draws random numbers (evaluation
uses its own fixed-seed windows). On CUDA the same holds only as far as the kernels are deterministic
(atomics in some backward kernels are not).
"""

from hamt.train.export import weights_sha256
from hamt.train.faults import EnvFaults
from hamt.train.ladder import TrainingFailed
from hamt.train.logs import LOG_COLUMNS
from hamt.train.loop import train
from hamt.train.optimizer import make_optimizer
from hamt.train.schedule import WarmupCosine

__all__ = ["LOG_COLUMNS", "EnvFaults", "TrainingFailed", "WarmupCosine", "make_optimizer", "train", "weights_sha256"]
