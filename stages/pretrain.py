"""DVC stage ``pretrain``: offline pretraining on ``pretrain.dataset`` (params: preset, seed, policy, critic, sac,
pretrain)."""

from _stage import run

run("pretrain", "--out", "runs/pretrain")
