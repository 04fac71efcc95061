"""DVC stage ``collect``: make the dataset named by ``collect.out`` (params: preset, seed, collect)."""

from _stage import run

run("collect", "--out", "runs/collect")
