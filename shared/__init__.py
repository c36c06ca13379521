"""Backend-neutral code shared by `torch_impl` and `jittor_impl`: nothing here imports a backend.

One subpackage per role, each layer importing only the ones below it (docs/layout.md):
  runtime   atomic writes, locks, paths, flag types, how scripts end, stop signals, probes
  model     config, parameters, checkpoints, pretrained folders, Hugging Face formats
  text      tokenizer and each task's data
  metrics   the E2E scores
  train     the training loop, its flags, schedules, seeds, masks and logs
  decode    beam-search spec, sampling, chat prompt, prediction and reference files
  tasks     pretraining, classification and instruction tuning on the shared trainer
  pipeline  work.sh's stage engine, task pipelines, reports, plots, benchmark plan
"""
