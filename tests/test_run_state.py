"""Per-run state: P3S-patched models sampled at the same time, taking turns step by step, in one process.

Each sampling runs in its own thread; after every sampler step it hands over to the other and waits for
its turn again, so the two samplings are interleaved step by step (only one computes at a time). Every
sampling must produce exactly what it produces alone, and append exactly the subject tokens it appends
alone: nothing of one sampling (bank, reference noise, appended segments) may leak into the other.
Two separately loaded copies of the tiny checkpoint are used because ComfyUI itself tracks one running
sampling per loaded model (``current_patcher``); the P3S side is what is under test.
"""
from __future__ import annotations

import threading

import pytest
import torch

import graphs

STEPS = 3
TIMEOUT = 240


@pytest.fixture(scope="module")
def env(host):
    # ComfyUI tracks one running sampling per loaded model (current_patcher): two loads, two models
    return graphs.injection_env(host, copies=2)


def _apply(e, copy: int, subject: int, mode: str):
    model, vae = e.copies[copy]
    with torch.inference_mode():
        return e.Apply.execute(model, vae, e.image[None], 1.0, 0.0, 1.0, mask=e.masks[subject:subject + 1].float(),
                               reference_mode=mode).result[0]


def _recording(model):
    """A clone of ``model`` whose extra attn1 patch (after P3S's) records every appended token, in order."""
    seen: list[torch.Tensor] = []

    def probe(n, ctx, val, extra):
        if "read" in extra.get("p3s", {}).values():
            seen.append(ctx[:, n.shape[1]:].clone())
        return n, ctx, val
    m = model.clone()
    m.set_model_attn1_patch(probe)
    return m, seen


def _job(e, model, seed: int):
    """A sampling of ``model`` (recorded) as a function of the sampler callback."""
    def run(callback=None):
        m, seen = _recording(model)
        latent = torch.zeros(1, 4, 8, 8)
        with torch.inference_mode():
            noise = e.N.comfy.sample.prepare_noise(latent, seed)
            out = e.N.comfy.sample.sample(m, noise, STEPS, 5.0, "euler", "normal", e.pos, e.neg, latent,
                                          callback=callback, disable_pbar=True, seed=seed)
        return out, seen
    return run


def _take_turns(jobs):
    """Run ``jobs`` in threads that hand over after every sampler step; returns (results, step log)."""
    cond = threading.Condition()
    state = {"turn": 0, "done": set()}
    results, errors, log = [None] * len(jobs), [], []

    def hand_over(i):  # with cond held: the next unfinished job after i (i itself when it is the last)
        order = list(range(i + 1, len(jobs))) + list(range(i + 1))
        state["turn"] = next((j for j in order if j not in state["done"]), None)
        cond.notify_all()

    def wait_turn(i):
        if not cond.wait_for(lambda: state["turn"] == i, timeout=TIMEOUT):
            raise TimeoutError(f"job {i} never got its turn back")

    def step_done(i, step):
        with cond:
            log.append((i, step))
            hand_over(i)
            wait_turn(i)

    def worker(i):
        try:
            with cond:
                wait_turn(i)
            results[i] = jobs[i](callback=lambda step, *_: step_done(i, step))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            with cond:
                state["done"].add(i)
                hand_over(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "interleaved samplings did not finish"
    if errors:
        raise errors[0]
    return results, log


def _same(a, b) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and (x - y).abs().max().item() <= 1e-6 for x, y in zip(a, b))


def test_two_p3s_models_interleaved_step_by_step_each_get_their_own_subject(env):
    a_model = _apply(env, 0, subject=0, mode="per_step")
    b_model = _apply(env, 1, subject=1, mode="cached")
    alone = [_job(env, a_model, 11)(), _job(env, b_model, 22)()]
    (together, log) = _take_turns([_job(env, a_model, 11), _job(env, b_model, 22)])
    assert [i for i, _ in log] == [0, 1] * STEPS  # really interleaved, step by step
    for (out_alone, seen_alone), (out, seen) in zip(alone, together):
        assert seen_alone and _same(seen, seen_alone)  # exactly its own subject tokens, call by call
        assert (out - out_alone).abs().max().item() <= 1e-6
    # and the two subjects differ, so a leak would have shown
    assert not _same(alone[0][1], alone[1][1])
    assert (alone[0][0] - alone[1][0]).abs().max().item() > 1e-3


def test_one_p3s_patch_in_two_interleaved_samplings_keeps_each_run_apart(env):
    """The same P3S patch (one P3S Apply) drives two samplings with different seeds at once: the cached
    bank and the reference noise belong to each sampling, not to the patch."""
    a_model = _apply(env, 0, subject=0, mode="cached")
    (patch,) = env.patch_mod.find_patches(a_model)
    b_model = env.copies[1][0].clone()
    patch.install(b_model)  # the very same patch object on the other copy
    assert env.patch_mod.find_patches(b_model) == [patch]
    alone = [_job(env, a_model, 5)(), _job(env, b_model, 6)()]
    (together, log) = _take_turns([_job(env, a_model, 5), _job(env, b_model, 6)])
    assert [i for i, _ in log] == [0, 1] * STEPS
    for (out_alone, seen_alone), (out, seen) in zip(alone, together):
        assert _same(seen, seen_alone)
        assert (out - out_alone).abs().max().item() <= 1e-6
    assert (alone[0][0] - alone[1][0]).abs().max().item() > 1e-3  # the seeds differ
