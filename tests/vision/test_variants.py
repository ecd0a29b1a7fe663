"""The pipeline's variant cache on its own: what a frame is prepared on, what is built, what is let go."""

from __future__ import annotations

import gc
from pathlib import Path

from edge_node.bundle import open_bundle
from edge_node.vision.model import Model
from edge_node.vision.variants import Loaded, VariantCache


def test_a_missing_resolution_is_built_once_while_the_loaded_one_serves(tiny_bundle: Path) -> None:
    model = Model(open_bundle(tiny_bundle), workers=1, threads=1)
    cache = VariantCache(Loaded(model, {224: model.build(224)}), keep=1)
    serving = cache.loaded.variants[224]
    assert cache.pick(160, serving=224) is serving  # not loaded yet: keep serving 224 px
    assert cache.pick(160, serving=224) is serving
    assert cache.next_build(timeout=0.1) == (model, 160)
    assert cache.next_build(timeout=0.1) is None  # asked for once, not per frame
    cache.built(model, 160, model.build(160), wanted=160, serving=224, stopping=False)
    assert list(cache.loaded.variants) == [160]  # keep=1: the wanted one stays, 224 px is let go
    assert cache.pick(160, serving=224) is cache.loaded.variants[160]
    assert not cache.release_retired()  # a frame prepared on 224 px still holds it
    del serving
    gc.collect()
    assert cache.release_retired() and not cache.release_retired()  # once


def test_a_failed_resolution_is_not_asked_for_again_until_the_mode_changes(tiny_bundle: Path) -> None:
    model = Model(open_bundle(tiny_bundle), workers=1, threads=1)
    cache = VariantCache(Loaded(model, {224: model.build(224)}), keep=1)
    cache.pick(192, serving=224)
    assert cache.next_build(timeout=0.1) == (model, 192)
    cache.build_failed(model, 192, "out of memory")
    cache.pick(192, serving=224)
    assert cache.next_build(timeout=0.1) is None
    cache.forget_failures()
    cache.pick(192, serving=224)
    assert cache.next_build(timeout=0.1) == (model, 192)


def test_a_build_for_a_swapped_out_model_is_let_go(tiny_bundle: Path) -> None:
    old = Model(open_bundle(tiny_bundle), workers=1, threads=1)
    new = Model(open_bundle(tiny_bundle), workers=1, threads=1)
    cache = VariantCache(Loaded(old, {224: old.build(224)}), keep=1)
    previous = cache.swap(Loaded(new, {224: new.build(224)}))
    assert previous.model is old and cache.loaded.model is new
    cache.built(old, 160, old.build(160), wanted=224, serving=224, stopping=False)
    assert list(cache.loaded.variants) == [224]
    cache.retire_all(previous)
    gc.collect()
    assert previous.variants == {} and cache.release_retired()
